"""across-seeds (and cross-cka of population sides), probes and delete-blocks through the result store: the same
request twice is answered from the store (the computation patched to fail proves it) with the same numbers and the
same files; a changed setting is a new key; --recompute computes again; labels and --format are re-rendered.

Each test has a store of its own (the session's HUBCOMPARE_HOME is shared by every test). The models are the
session's small digits checkpoint and copies of it (sides of several members without training any)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import computed_anyway, own_home_env
from typer.testing import CliRunner

from hubcompare.cli import app
from hubcompare.comparisons import probe_kinds, seed_kinds
from hubcompare.comparisons.requests import ComparisonRequest
from hubcompare.errors import InvalidRequestError

runner = CliRunner()


@pytest.fixture
def home(tmp_path):
    return own_home_env(tmp_path)


def _json(home, *args):
    r = runner.invoke(app, [*args, "--device", "cpu", "--json"], env=home)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), r.stderr


def _same_files(a, b, names):
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def members(tmp_path_factory, trained_run):
    """Three copies of one trained model in folders of their own: three members, as far as sides go."""
    root = tmp_path_factory.mktemp("seed-members")
    return [shutil.copytree(trained_run, root / f"m{i}") for i in range(3)]


@pytest.fixture
def one_thread():
    """--threads 1 sets torch's threads for the process: put them back after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_across_seeds_twice_comes_from_the_store_and_cross_cka_sides_find_it(members, home, tmp_path, monkeypatch, one_thread):
    a, b = f"{members[0]}+{members[1]}", str(members[2])
    args = ["--examples", "100", "--batch-size", "25", "--threads", "1"]
    first, err = _json(home, "across-seeds", a, b, *args, "--out", str(tmp_path / "one"))
    assert first["from_store"] is False and "stored result" not in err
    # copies of one model: every pair's CKA at the same layer is 1 (an independent check of what was stored)
    assert first["summary"]["within_a"]["all"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert first["summary"]["models"] == {"a": 2, "b": 1}
    monkeypatch.setattr(seed_kinds, "across_seeds", computed_anyway)
    second, err = _json(home, "across-seeds", a, b, *args, "--max-memory", "4", "--out", str(tmp_path / "two"))
    assert second["from_store"] is True and second["result_key"] == first["result_key"]
    assert f"stored result {first['result_key'][:12]}" in err and "--recompute to compute again" in err
    assert second["pair_sets"] == first["pair_sets"] and second["summary"] == first["summary"]
    _same_files(tmp_path / "one", tmp_path / "two", ("across_seeds.json", "across_seeds.csv", "across_seeds.png"))
    # cross-cka of the same two sides runs across-seeds: the same request, so the same stored result
    r = runner.invoke(app, ["cross-cka", a, b, *args, "--device", "cpu", "--label", "deep", "--label", "wide",
                            "--format", "svg", "--out", str(tmp_path / "three")], env=home)
    assert r.exit_code == 0, r.output
    assert "stored result" in r.stderr and "deep: 2 models" in " ".join(r.stdout.split())
    relabelled = json.loads((tmp_path / "three" / "across_seeds.json").read_text())
    assert relabelled["sides"]["a"]["label"] == "deep" and relabelled["provenance"]["sides"]["b"]["label"] == "wide"
    assert relabelled["pair_sets"] == first["pair_sets"]
    assert any(w.startswith("side wide has one model") for w in relabelled["warnings"])
    assert (tmp_path / "three" / "across_seeds.svg").read_text().lstrip().startswith("<?xml")
    # a changed setting is another result: it is computed (and fails here, proving the store was not used)
    r = runner.invoke(app, ["across-seeds", a, b, *args, "--seed", "1", "--device", "cpu", "--out", str(tmp_path / "x")],
                      env=home)
    assert r.exit_code != 0 and "computed although" in str(r.exception)
    monkeypatch.undo()
    third, err = _json(home, "across-seeds", a, b, *args, "--recompute", "--out", str(tmp_path / "four"))
    assert third["from_store"] is False and third["result_key"] == first["result_key"] and "stored result" not in err
    assert third["pair_sets"] == first["pair_sets"]


def test_probes_twice_comes_from_the_store(trained_run, home, tmp_path, monkeypatch):
    args = [str(trained_run), "--layers", "pool", "--train-examples", "200", "--examples", "100", "--l2", "0.01", "--blocks",
            "none"]
    first, err = _json(home, "probes", *args, "--out", str(tmp_path / "one"))
    assert first["from_store"] is False and "stored result" not in err
    monkeypatch.setattr(probe_kinds, "probe_layers", computed_anyway)
    second, err = _json(home, "probes", *args, "--memory-gb", "1", "--out", str(tmp_path / "two"))
    assert second["from_store"] is True and second["result_key"] == first["result_key"]
    assert f"stored result {first['result_key'][:12]}" in err
    assert second["layers"] == first["layers"] and second["model_test_accuracy"] == first["model_test_accuracy"]
    _same_files(tmp_path / "one", tmp_path / "two", ("probes.json", "probes.csv", "probes.png"))
    # the figure in another format is drawn again from the stored JSON, nothing recomputed
    again, _ = _json(home, "probes", *args, "--format", "svg", "--out", str(tmp_path / "svg"))
    assert again["from_store"] is True and (tmp_path / "svg" / "probes.svg").read_text().lstrip().startswith("<?xml")
    for changed in (["--l2", "0.1"], ["--pool"], ["--validation-fraction", "0.2"], ["--seed", "1"]):
        r = runner.invoke(app, ["probes", *args, *changed, "--device", "cpu", "--out", str(tmp_path / "x")], env=home)
        assert r.exit_code != 0 and "computed although" in str(r.exception), changed
    monkeypatch.undo()
    third, err = _json(home, "probes", *args, "--recompute", "--out", str(tmp_path / "three"))
    assert third["from_store"] is False and third["result_key"] == first["result_key"]
    assert [r["test_accuracy"] for r in third["layers"]] == [r["test_accuracy"] for r in first["layers"]]


def test_delete_blocks_twice_comes_from_the_store(trained_run, home, tmp_path, monkeypatch):
    args = [str(trained_run), "--examples", "200", "--blocks", "none"]
    first, _ = _json(home, "delete-blocks", *args, "--out", str(tmp_path / "one"))
    assert first["from_store"] is False
    monkeypatch.setattr(probe_kinds, "run_deletion", computed_anyway)
    second, err = _json(home, "delete-blocks", *args, "--out", str(tmp_path / "two"))
    assert second["from_store"] is True and second["result_key"] == first["result_key"] and "stored result" in err
    assert second["stages"] == first["stages"] and second["full_accuracy"] == first["full_accuracy"]
    _same_files(tmp_path / "one", tmp_path / "two", ("deletion.json", "deletion.csv", "deletion.png"))
    for changed in (["--examples", "150"], ["--batch-size", "100"]):
        r = runner.invoke(app, ["delete-blocks", *args, *changed, "--device", "cpu", "--out", str(tmp_path / "x")], env=home)
        assert r.exit_code != 0 and "computed although" in str(r.exception), changed
    monkeypatch.undo()
    third, _ = _json(home, "delete-blocks", *args, "--recompute", "--out", str(tmp_path / "three"))
    assert third["from_store"] is False and third["result_key"] == first["result_key"]
    assert third["stages"] == first["stages"]


def test_service_requests_of_these_kinds_are_strict():
    ok = ComparisonRequest.from_json({"kind": "probes", "refs": ["hf-hub:o/m"], "options": {"pool": True, "l2": [0.01]}},
                                     allow_paths=False)
    assert ok.options == {"pool": True, "l2": [0.01]}
    bad = [({"kind": "probes", "refs": ["hf-hub:o/m"], "options": {"blocks": "/etc/passwd"}}, "options.blocks"),
           ({"kind": "probes", "refs": ["hf-hub:o/m"], "options": {"pool": "yes"}}, "options.pool"),
           ({"kind": "probes", "refs": ["hf-hub:o/m"], "options": {"validation_fraction": 1.0}}, "options.validation_fraction"),
           ({"kind": "probes", "refs": ["hf-hub:o/m"], "passes": 3}, "passes"),
           ({"kind": "delete-blocks", "refs": ["hf-hub:o/m"], "layers": ["*.out"]}, "layers"),
           ({"kind": "across-seeds", "refs": ["population:p"]}, "refs"),
           ({"kind": "across-seeds", "refs": ["population:p", "/tmp"]}, "refs[1]")]
    for body, field in bad:
        with pytest.raises(InvalidRequestError) as e:
            ComparisonRequest.from_json(body, allow_paths=False)
        assert e.value.field == field, (body, str(e.value))


# --- a pulled result's origin, trust, and `results verify` (issue #23, items 7 and 17) ------------------
PULLED = "hf-hub-result:mallory/cka-results@" + "c" * 40


def _poisoned_copy(store, stored, source: str = PULLED, poison: float = 0.25):
    """``stored`` replaced in ``store`` by a copy claiming ``source``, every CKA value shifted by ``poison``: what a
    pull of a record with the right key inputs and fake values leaves in the store."""
    import numpy as np

    keep = {name: stored.file(name).read_bytes() for name in stored.files}
    record = stored.to_json()
    store.remove(stored.key)
    with store.staging() as staging:
        for name, data in keep.items():
            (staging / name).write_bytes(data)
        doc = json.loads((staging / "cka.json").read_text())
        doc["cka"] = [[v + poison for v in row] for row in doc["cka"]]
        (staging / "cka.json").write_text(json.dumps(doc))
        with np.load(staging / "cka.npz") as npz:
            arrays = {k: npz[k] + poison if npz[k].dtype.kind == "f" else npz[k] for k in npz.files}
        np.savez(staging / "cka.npz", **arrays)
        return store.put(stored.key, stored.kind, title=record["title"], request=record["request"],
                         key_inputs=record["key_inputs"], summary=record["summary"], models=record["models"],
                         dataset=record["dataset"], staging=staging, seconds=record["seconds"], source=source)


def test_a_pulled_result_does_not_answer_a_local_request_unless_trusted(trained_run, home, tmp_path, monkeypatch):
    from hubcompare.comparisons.run import run_request
    from hubcompare.results.store import ResultStore

    store = ResultStore(tmp_path / "home" / "results")
    req = ComparisonRequest("cka", (str(trained_run),), examples=100, batch_size=50, layers=("*.out",))
    fresh = run_request(req, store=store, device="cpu")
    true_cka = json.loads(fresh.stored.file("cka.json").read_text())["cka"]
    poisoned = _poisoned_copy(store, fresh.stored)
    # default: computed here (replacing the pulled copy), and the user is told
    mine = run_request(req, store=store, device="cpu")
    assert not mine.from_store and mine.stored.source == "computed"
    assert poisoned.pulled and poisoned.origin == f"pulled from {PULLED}"
    assert mine.superseded == PULLED and not mine.stored.pulled
    assert any("pulled result" in n and "--trust-pulled" in n for n in mine.notices)
    assert json.loads(mine.stored.file("cka.json").read_text())["cka"] == true_cka
    # trusted (the argument, or the service's setting): answered from it, and it says where it came from
    _poisoned_copy(store, mine.stored)
    trusted = run_request(req, store=store, device="cpu", trust_pulled=True, compare=computed_anyway)
    assert trusted.from_store and trusted.stored.source == PULLED
    monkeypatch.setenv("HUBCOMPARE_TRUST_PULLED", "1")
    assert run_request(req, store=store, device="cpu", compare=computed_anyway).stored.pulled
    monkeypatch.delenv("HUBCOMPARE_TRUST_PULLED")
    # the command line says so on stderr, and --json says where the answer came from
    args = ["cka", str(trained_run), "--examples", "100", "--batch-size", "50", "--layers", "*.out"]
    trusted_cli, err = _json(home, *args, "--trust-pulled", "--out", str(tmp_path / "t"))
    assert trusted_cli["from_store"] is True and trusted_cli["pulled"] is True and trusted_cli["source"] == PULLED
    assert f"PULLED from {PULLED}" in " ".join(err.split()) and "results verify" in err
    own, err = _json(home, *args, "--out", str(tmp_path / "o"))
    assert own["from_store"] is False and own["pulled"] is False and own["source"] == "computed"
    assert "pulled result" in err and "--trust-pulled" in " ".join(err.split())
    assert own["cka"] == true_cka


def test_results_verify_recomputes_and_fails_on_a_poisoned_result(trained_run, home, tmp_path):
    from hubcompare.comparisons.run import run_request
    from hubcompare.results.store import ResultStore

    store = ResultStore(tmp_path / "home" / "results")
    req = ComparisonRequest("cka", (str(trained_run),), examples=100, batch_size=50, layers=("*.out",))
    stored = run_request(req, store=store, device="cpu").stored
    r = runner.invoke(app, ["results", "verify", stored.key[:10], "--device", "cpu", "--json"], env=home)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["ok"] and report["tolerance"] == 1e-4 and report["source"] == "computed"
    assert {("cka.npz", "cka"), ("cka.json", "cka[*][*]")} <= {(a["file"], a["name"]) for a in report["arrays"]}
    assert all(a["max_abs_diff"] <= 1e-4 for a in report["arrays"])
    poisoned = _poisoned_copy(store, stored, poison=1e-3)
    r = runner.invoke(app, ["results", "verify", stored.key[:10], "--device", "cpu"], env={**home, "COLUMNS": "100"})
    assert r.exit_code == 1, r.output
    assert "MISMATCH" in r.stdout and f"pulled from {PULLED}" in " ".join(r.stdout.split()) and "0.001" in r.stdout
    assert store.get(stored.key).source == poisoned.source  # verify never replaces what is stored
    r = runner.invoke(app, ["results", "verify", stored.key[:10], "--device", "cpu", "--tolerance", "0.01"], env=home)
    assert r.exit_code == 0 and "verified" in r.stdout
    r = runner.invoke(app, ["results", "show", stored.key[:10]], env={**home, "COLUMNS": "200"})
    assert f"pulled from {PULLED}" in r.stdout
    # a record whose request does not give its key here (another example count) is not compared: the inputs are named
    current = store.get(stored.key)
    keep = {name: current.file(name).read_bytes() for name in current.files}
    store.remove(stored.key)
    with store.staging() as staging:
        for name, data in keep.items():
            (staging / name).write_bytes(data)
        store.put(stored.key, "cka", title="t", request=current.request | {"examples": 99}, key_inputs=current.key_inputs,
                  summary=current.summary, models=current.models, dataset=current.dataset, staging=staging, seconds=1.0,
                  source=PULLED)
    r = runner.invoke(app, ["results", "verify", stored.key[:10], "--device", "cpu"], env=home)
    assert r.exit_code == 2 and "ResultStoreError" in r.output and "cannot verify" in r.output, r.output
    assert "examples" in r.output


def test_labels_are_per_request_never_the_first_requesters(trained_run, home, tmp_path):
    from hubcompare.results.store import ResultStore

    args = ["cross-cka", str(trained_run), f"local-dir:{trained_run}", "--layers", "*.out", "--examples", "100",
            "--batch-size", "50"]
    first, _ = _json(home, *args, "--label", "alice's secret net", "--label", "bob", "--out", str(tmp_path / "a"))
    assert first["from_store"] is False and first["pairs"][0]["label_a"] == "alice's secret net"
    (stored,) = ResultStore(tmp_path / "home" / "results").list()
    on_disk = "".join(p.read_text(errors="replace") for p in stored.path.iterdir() if p.suffix in (".json", ".svg"))
    assert "alice" not in stored.title and "alice" not in json.dumps(stored.to_json()) and "alice" not in on_disk
    second, _ = _json(home, *args, "--out", str(tmp_path / "b"))
    assert second["from_store"] is True and "alice" not in json.dumps(second)
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "b").iterdir() if p.suffix == ".json")
    assert "alice" not in written and "bob" not in written
    third, _ = _json(home, *args, "--label", "carol", "--label", "dave", "--out", str(tmp_path / "c"))
    assert third["from_store"] is True and third["pairs"][0]["label_a"] == "carol"
