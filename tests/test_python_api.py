"""#25 item 4: the Python API (``hubcompare.compare``) makes the CLI's comparison: its batch plan, labels, warnings and
numbers, and (opt-in) its result store under the CLI's key."""

import json

import numpy as np
import pytest
from helpers import own_home_env, toy_dataset
from typer.testing import CliRunner

import hubcompare
from hubcompare.cli import app
from hubcompare.errors import InvalidRequestError
from hubcompare.hub.references import resolve_reference
from hubcompare.results.store import ResultStore
from hubcompare.similarity.batchplan import choose_batch_plan
from hubcompare.similarity.engine import CompareModel, ComparisonPass
from hubcompare.similarity.engine import compare as engine_compare

runner = CliRunner()
LAYERS = ["stem", "*.out"]


def _cli(home, *args):
    r = runner.invoke(app, [*args, "--device", "cpu", "--json"], env=home)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_python_and_cli_agree_on_plan_labels_warnings_and_numbers(trained_run, tmp_path):
    refs = [str(trained_run), f"local-dir:{trained_run}"]
    cli = _cli(own_home_env(tmp_path), "cross-cka", *refs, "--layers", "stem", "--layers", "*.out", "--out",
               str(tmp_path / "cli"))
    got = hubcompare.compare(refs, layers=LAYERS, device="cpu")
    (pair,) = cli["pairs"]
    r = got.pair(0, 1)
    assert got.batch_plan.to_json() == cli["batch_plan"] == pair["provenance"]["batch_plan"]
    assert got.batch_plan.batch_size == 63 and got.batch_plan.num_batches == 8  # not 256 (2 minibatches) on digits
    assert got.labels == [m["label"] for m in cli["models"]] == [r.label_a, r.label_b] == [pair["label_a"], pair["label_b"]]
    assert r.warnings == pair["warnings"] and got.warnings == r.warnings
    assert r.layers_a == pair["layers_a"] and np.allclose(r.value, np.array(pair["cka"], dtype=float), atol=1e-7)
    assert np.allclose(r.se, np.array(pair["se"], dtype=float), atol=1e-7)
    for k in ("batch_size", "num_batches", "num_examples", "passes", "seed", "dataset", "inputs", "layers", "batch_plan"):
        assert json.loads(json.dumps(got.settings[k])) == pair["provenance"][k], k
    assert got.key is None and not got.from_store and got.pair(0, 0).kind == "within"  # nothing stored, every pair


def test_the_python_api_warns_as_the_cli_does(trained_run):
    model = CompareModel.from_resolved(resolve_reference(str(trained_run)), ["stem"], ref="r8")
    few = hubcompare.compare([model], toy_dataset(70), batch_size=32, device="cpu")  # 2 minibatches: no SE, said
    plan = choose_batch_plan(70, 32)
    assert plan.warning() in few.warnings and few.batch_plan == plan
    assert any(w.startswith("r8: trained on digits, compared on toy") for w in few.warnings)  # another dataset, said
    assert few.labels == ["ResNet-8 (1x)"] and few.pair(0, 0).label_a == "ResNet-8 (1x)"  # the card's name, not "r8"
    named = hubcompare.compare([model], toy_dataset(70), batch_size=32, device="cpu", labels=["mine"])
    assert named.pair(0, 0).label_a == "mine"
    # the engine's own default is the CLI's plan too, not the paper's 256 whatever the data
    assert engine_compare([model], toy_dataset(70), device="cpu").settings["batch_size"] == choose_batch_plan(70).batch_size
    with ComparisonPass([model], toy_dataset(70), device="cpu") as run:  # what Ray shards, blocks and seeds build on
        assert run.batch_size == 32 and len(run.plan) == choose_batch_plan(70).num_batches
    with pytest.raises(InvalidRequestError, match="dataset"):
        hubcompare.compare([model], toy_dataset(70), store=True)
    with pytest.raises(IndexError):
        few.pair(0, 1)


def test_store_is_opt_in_and_the_cli_shares_its_results(trained_run, tmp_path, monkeypatch):
    refs = [str(trained_run), f"local-dir:{trained_run}"]
    home = own_home_env(tmp_path)
    store = ResultStore(tmp_path / "home" / "results")
    fresh = hubcompare.compare(refs, layers=LAYERS, device="cpu", store=store)
    assert not fresh.from_store and fresh.key and [s.key for s in store.list()] == [fresh.key]
    cli = _cli(home, "cross-cka", *refs, "--layers", "stem", "--layers", "*.out", "--out", str(tmp_path / "cli"))
    assert cli["from_store"] is True and cli["result_key"] == fresh.key  # the CLI's request is the same request
    monkeypatch.setenv("HUBCOMPARE_HOME", str(tmp_path / "home"))
    again = hubcompare.compare(refs, layers=LAYERS, device="cpu", store=True)  # True: the CLI's own store
    assert again.from_store and again.key == fresh.key and again.warnings == fresh.warnings
    assert np.array_equal(again.pair(0, 1).value, fresh.pair(0, 1).value)
    assert again.labels == fresh.labels == [m["label"] for m in cli["models"]]
    assert again.batch_plan == fresh.batch_plan and again.settings["batch_plan"] == cli["batch_plan"]
    labelled = hubcompare.compare(refs, layers=LAYERS, device="cpu", store=store, labels=["a", "b"])
    assert labelled.from_store and (labelled.pair(0, 1).label_a, labelled.pair(0, 1).label_b) == ("a", "b")
    with pytest.raises(InvalidRequestError, match="not in the stored result"):
        again.pair(0, 0)  # a stored cross-cka keeps the pairs across models
    assert len(store.list()) == 1  # nothing stored without store=
    hubcompare.compare(refs, layers=["stem"], device="cpu")
    assert len(store.list()) == 1


def test_other_measures_are_stored_as_the_cli_compare_stores_them(trained_run, tmp_path):
    refs = [str(trained_run), f"local-dir:{trained_run}"]
    store = ResultStore(tmp_path / "home" / "results")
    fresh = hubcompare.compare(refs, layers=LAYERS, device="cpu", measures=["rsa", "linreg"], store=store)
    live = hubcompare.compare(refs, layers=LAYERS, device="cpu", measures=["rsa", "linreg"])  # nothing stored
    assert not fresh.from_store and [s.kind for s in store.list()] == ["compare"]
    for name in ("rsa", "linreg"):
        assert np.array_equal(fresh.measure(name, 0, 1)[0], live.measure(name, 0, 1)[0], equal_nan=True)
    cli = _cli(own_home_env(tmp_path), "compare", *refs, "--measure", "rsa", "--measure", "linreg", "--layers", "stem",
               "--layers", "*.out", "--out", str(tmp_path / "cli"))
    assert cli["from_store"] is True and cli["result_key"] == fresh.key  # the CLI's compare is the same request
    again = hubcompare.compare(refs, layers=LAYERS, device="cpu", measures=["rsa", "linreg"], store=store)
    assert again.from_store and np.array_equal(again.measure("rsa", 1, 0)[0], live.measure("rsa", 1, 0)[0], equal_nan=True)
    with pytest.raises(InvalidRequestError, match="asymmetric"):
        again.measure("linreg", 1, 0)  # stored: model 0's layers predicting model 1's
    with pytest.raises(InvalidRequestError, match="not in this stored result"):
        again.measure("procrustes", 0, 1)
    with pytest.raises(InvalidRequestError, match="read them with measure"):
        again.pair(0, 1)
