"""`hubcompare compare` results in the store: the measures and their parameters in the key, answered from the store,
relabelled on export, checked when shared; the request's measures checked like every field."""

from __future__ import annotations

import json

import pytest
from helpers import own_home_env, small_recipe
from typer.testing import CliRunner

from hubcompare.cli.main import app
from hubcompare.comparisons.requests import ComparisonRequest
from hubcompare.errors import InvalidRequestError, MeasureError, SharedResultError
from hubcompare.results.limits import PullLimits
from hubcompare.results.schemas import check_document
from hubcompare.similarity.measures import make_measure, measure_from_key, measure_names
from hubcompare.training.loop import train

runner = CliRunner()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-store")
    return [str(train(small_recipe(**{"train.seed": s, "train.epochs": 2}), root / f"s{s}").run_dir) for s in (0, 1)]


def _compare(runs, tmp_path, *args):
    r = runner.invoke(app, ["compare", *runs, "--examples", "200", "--batch-size", "200", "--device", "cpu", "--json",
                            *args], env=own_home_env(tmp_path))
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_measure_keys_name_each_measure_with_its_parameters():
    for name in measure_names():
        m = make_measure(name)
        assert measure_from_key(m.key).key == m.key
    assert measure_from_key("rbf-cka").key == measure_from_key("rbf-cka(frac=0.8)").key == "rbf-cka(frac=0.8)"
    assert measure_from_key(" mknn(k=20) ").values == {"k": 20}
    for bad, why in (("rbf-cka(frac=0.5", "not a measure key"), ("rbf-cka(frac)", "not PARAM=NUMBER"),
                     ("mknn(k=2.5)", "whole number"), ("cca", "not a measure"), ("rbf-cka(frac=nan)", "out of range")):
        with pytest.raises(MeasureError, match=why):
            measure_from_key(bad)


@pytest.mark.parametrize("measures, field, why", [
    (["rsa", "cca"], r"options\.measures\[1\]", "'cca' is not a measure"),
    (["rsa", "rsa"], r"options\.measures", "names a measure twice"),
    (["rbf-cka", "rbf-cka(frac=0.8)"], r"options\.measures", "names a measure twice"),  # the same, parameters resolved
    ([], r"options\.measures", "not a list of 1 to 16"),
    ("rsa", r"options\.measures", "not a list of 1 to 16"),
    (["mknn(k=0)"], r"options\.measures\[0\]", "out of range"),
])
def test_a_compare_requests_measures_are_checked(measures, field, why):
    with pytest.raises(InvalidRequestError, match=why) as e:
        ComparisonRequest("compare", ("a", "b"), options={"measures": measures})
    assert e.value.field is None or __import__("re").fullmatch(field, e.value.field)


def test_compare_results_are_stored_keyed_by_their_measures_and_relabelled_on_export(two_runs, tmp_path):
    first = _compare(two_runs, tmp_path, "--measure", "rsa", "--measure", "rbf-cka", "--param", "rbf-cka.frac=0.5")
    assert not first["from_store"] and list(first["measures"]) == ["rsa", "rbf-cka"]
    again = _compare(two_runs, tmp_path, "--measure", "rsa", "--measure", "rbf-cka", "--param", "rbf-cka.frac=0.5")
    assert again["from_store"] and again["result_key"] == first["result_key"]
    assert again["measures"] == first["measures"]  # the stored numbers, not new ones
    other = _compare(two_runs, tmp_path, "--measure", "rsa", "--measure", "rbf-cka")  # frac 0.8: another result
    assert other["result_key"] != first["result_key"] and not other["from_store"]
    assert other["measures"]["rsa"]["value"] == first["measures"]["rsa"]["value"]  # one pass's rsa is another's
    labelled = _compare(two_runs, tmp_path, "--measure", "rsa", "--measure", "rbf-cka", "--param", "rbf-cka.frac=0.5",
                        "--label", "first", "--label", "second", "--format", "svg")
    assert labelled["from_store"] and labelled["result_key"] == first["result_key"]
    assert [m["label"] for m in labelled["models"]] == ["first", "second"]
    assert labelled["pairs"][0]["label_a"] == "first" and labelled["files"][1].endswith("measures.svg")
    listed = runner.invoke(app, ["results", "list", "--json"], env=own_home_env(tmp_path))
    kinds = [r["kind"] for r in json.loads(listed.stdout)]
    assert kinds.count("compare") == 2


def test_a_stored_measures_json_is_checked_before_it_is_shared(two_runs, tmp_path):
    doc = _compare(two_runs, tmp_path, "--measure", "procrustes")
    stored = json.loads(open(doc["files"][0]).read())
    check_document("compare", "measures.json", stored, "test", PullLimits())  # what compare writes passes
    broken = json.loads(json.dumps(stored))
    broken["pairs"][0]["measures"]["procrustes"]["value"] = [[0.5]]  # not layers_a x layers_b
    with pytest.raises(SharedResultError, match="is not a .* matrix"):
        check_document("compare", "measures.json", broken, "test", PullLimits())
    broken = json.loads(json.dumps(stored))
    broken["pairs"][0]["index_b"] = 7
    with pytest.raises(SharedResultError, match="outside the 2 models"):
        check_document("compare", "measures.json", broken, "test", PullLimits())
