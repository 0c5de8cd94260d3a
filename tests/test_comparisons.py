"""Comparison requests through the result store: the same request is answered from the store (same numbers, same
files, no computation), --recompute computes again, a changed model, dataset or layer choice never gets the stale
result, labels and figure formats are re-rendered from the stored JSON, and the service's JSON requests are strict.

Each test has a store of its own (the session's HUBCOMPARE_HOME is shared by every test)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import computed_anyway, own_home_env
from typer.testing import CliRunner

from hubcompare.cli import app
from hubcompare.comparisons.requests import ComparisonRequest
from hubcompare.comparisons.kinds import kind_for
from hubcompare.comparisons.run import export, files_of, run_request
from hubcompare.errors import InvalidRequestError
from hubcompare.results.store import ResultStore
from hubcompare.similarity.results import CKAResult

runner = CliRunner()


@pytest.fixture
def home(tmp_path):
    return own_home_env(tmp_path)


def _cli(home, *args):
    r = runner.invoke(app, list(args), env=home)
    assert r.exit_code == 0, r.output
    return r


def test_same_request_twice_is_answered_from_the_store(trained_run, tmp_path, home):
    common = ["cross-cka", str(trained_run), f"local-dir:{trained_run}", "--layers", "*.out", "--device", "cpu"]
    first = _cli(home, *common, "--out", str(tmp_path / "a"))
    second = _cli(home, *common, "--out", str(tmp_path / "b"))
    assert "CKA on digits" in first.stdout and "stored result" not in first.stderr
    assert "CKA on digits" not in second.output and "--recompute to compute again" in second.stderr  # no pass ran
    # the tables printed from the stored JSON are the fresh run's (less its progress bar)
    fresh = first.stdout.replace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert [line for line in fresh.splitlines() if "━" not in line] == second.stdout.splitlines()
    assert "mean diagonal CKA" in second.stdout
    for name in ("cka.json", "cka.npz", "cka.png"):  # the very same files the fresh run wrote
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    printed = json.loads(_cli(home, *common, "--out", str(tmp_path / "c"), "--json").stdout)
    assert printed["from_store"] is True and f"stored result {printed['result_key'][:12]}" in second.stderr
    assert printed["pairs"][0]["cka"] == json.loads((tmp_path / "a" / "cka.json").read_text())["cka"]


def test_a_stored_result_is_returned_without_computing(trained_run, tmp_path, monkeypatch):
    """The second request is answered from the store: the kind's compute and the pass are both patched to fail (a
    wall-clock comparison was this test's proof once; it failed on a loaded machine, and proved less)."""
    store = ResultStore(tmp_path / "store")
    req = ComparisonRequest("cka", (str(trained_run),), batch_size=64, passes=2)
    fresh = run_request(req, store=store, device="cpu")
    monkeypatch.setattr(type(kind_for("cka")), "compute", computed_anyway)
    hit = run_request(req, store=store, device="cpu", compare=computed_anyway)  # would raise if it computed
    assert not fresh.from_store and hit.from_store and hit.key == fresh.key and hit.warnings == fresh.warnings
    assert hit.stored.seconds == pytest.approx(fresh.stored.seconds) and len(store.list()) == 1
    a = CKAResult.load(fresh.stored.file("cka.json"))
    b = CKAResult.load(files_of(req, export(hit, req, tmp_path / "out"), "document")[0])
    assert np.array_equal(a.value, b.value, equal_nan=True) and np.array_equal(a.se, b.se, equal_nan=True)


def test_recompute_computes_again_and_replaces_the_stored_result(trained_run, tmp_path, home):
    common = ["cka", str(trained_run), "--examples", "200", "--device", "cpu", "--json"]
    first = json.loads(_cli(home, *common, "--out", str(tmp_path / "a")).stdout)
    again = _cli(home, *common, "--out", str(tmp_path / "b"), "--recompute")
    second = json.loads(again.stdout)
    assert second["from_store"] is False and second["result_key"] == first["result_key"]
    assert "CKA on digits" in again.stderr and "stored result" not in again.stderr
    assert second["cka"] == first["cka"]  # the same numbers, computed twice
    stored = ResultStore(tmp_path / "home" / "results").list()
    assert [s.key for s in stored] == [first["result_key"]]  # replaced, not duplicated


def test_changed_weights_data_or_layers_never_get_the_stale_result(trained_run, tmp_path, monkeypatch):
    from hubcompare.comparisons import cka_kinds
    from hubcompare.data.datasets import ImageDataset
    from hubcompare.models.checkpoint import load_checkpoint
    from hubcompare.models.weights import load_model, write_checkpoint

    store = ResultStore(tmp_path / "store")
    run = shutil.copytree(trained_run, tmp_path / "run")

    def ask(**changes):
        req = ComparisonRequest("cka", (str(run),), **{"batch_size": 64, "layers": ("*.out",), **changes})
        return run_request(req, store=store, device="cpu")

    base = ask()
    values = CKAResult.load(base.stored.file("cka.json")).value
    assert ask(layers=("stage*.out",)).key == base.key  # other globs tapping the same layers: the same result
    keys = {base.key}
    for changed in (ask(layers=("stem", "*.out")), ask(examples=300), ask(seed=1), ask(batch_size=50)):
        assert not changed.from_store and changed.key not in keys
        keys.add(changed.key)

    # the checkpoint retrained in place (new weights + config): a new key, new numbers
    ckpt = load_checkpoint(run)
    model = load_model(ckpt)
    with torch.no_grad():
        model.stages[1][0].conv1.weight.mul_(-1.0)
    write_checkpoint(run, model, ckpt.meta)
    retrained = ask()
    assert not retrained.from_store and retrained.key not in keys
    assert not np.allclose(CKAResult.load(retrained.stored.file("cka.json")).value, values)
    keys.add(retrained.key)

    # the same data name and split, other contents (a different fingerprint): a new key
    real = cka_kinds.comparison_dataset

    def other_data(*args, **kwargs):
        ds = real(*args, **kwargs)
        images = ds.images.clone()
        images[: len(images) // 2] = 255 - images[: len(images) // 2]
        return ImageDataset(ds.name, ds.split, images, ds.labels, ds.classes, ds.ids)

    monkeypatch.setattr(cka_kinds, "comparison_dataset", other_data)
    moved = ask()
    assert not moved.from_store and moved.key not in keys
    assert moved.stored.key_inputs["dataset"]["fingerprint"] != retrained.stored.key_inputs["dataset"]["fingerprint"]


def test_labels_and_format_are_presentation_same_key_files_rendered_again(trained_run, tmp_path, home):
    common = ["cka", str(trained_run), "--examples", "200", "--device", "cpu", "--json"]
    first = json.loads(_cli(home, *common, "--out", str(tmp_path / "a")).stdout)
    second = json.loads(_cli(home, *common, "--out", str(tmp_path / "b"), "--label", "my net", "--format", "svg").stdout)
    assert second["from_store"] is True and second["result_key"] == first["result_key"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["cka.json", "cka.npz", "cka.svg"]
    written = json.loads((tmp_path / "b" / "cka.json").read_text())
    assert written["label_a"] == written["label_b"] == second["label_a"] == "my net" and written["cka"] == first["cka"]
    assert (tmp_path / "a" / "cka.npz").read_bytes() == (tmp_path / "b" / "cka.npz").read_bytes()
    svg = (tmp_path / "b" / "cka.svg").read_text()
    assert "<svg" in svg and "my net: layer" in svg and "ResNet-8" not in svg

    # three models: file names follow the labels, the grid is drawn again with them
    runs = [shutil.copytree(trained_run, tmp_path / f"m{i}") for i in range(3)]
    three = ["cross-cka", *map(str, runs), "--layers", "*.out", "--examples", "200", "--device", "cpu", "--json"]
    _cli(home, *three, "--out", str(tmp_path / "c"))
    again = json.loads(_cli(home, *three, "--out", str(tmp_path / "d"), "--label", "x", "--label", "y", "--label", "z").stdout)
    assert again["from_store"] is True
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(
        ["cka-grid.png"] + [f"cka-{a}-vs-{b}.{e}" for a, b in (("x", "y"), ("x", "z"), ("y", "z")) for e in ("json", "npz", "png")])
    assert json.loads((tmp_path / "d" / "cka-x-vs-z.json").read_text())["label_b"] == "z"


def test_a_failed_computation_leaves_no_entry(trained_run, tmp_path):
    store = ResultStore(tmp_path / "store")
    req = ComparisonRequest("cka", (str(trained_run),), examples=100)

    def fails(*args, **kwargs):
        raise RuntimeError("killed mid-pass")

    with pytest.raises(RuntimeError, match="mid-pass"):
        run_request(req, store=store, device="cpu", compare=fails)
    assert store.list() == [] and not any((tmp_path / "store" / ".staging").iterdir())
    assert not run_request(req, store=store, device="cpu").from_store  # computed, not a half-stored entry


def _refused(d: dict, field: str, match: str, **kwargs) -> None:
    with pytest.raises(InvalidRequestError, match=match) as e:
        ComparisonRequest.from_json(d, **kwargs)
    assert e.value.field == field and str(e.value).startswith(field)


def test_from_json_is_strict(trained_run, tmp_path):
    ok = {"kind": "cross-cka", "refs": ["hf-hub:alice/a", "timm:resnet18.a1_in1k"], "layers": ["stage2.*.out"],
          "examples": 256, "labels": ["a", None], "fmt": "svg"}
    req = ComparisonRequest.from_json(ok, allow_paths=False)
    assert req.refs == ("hf-hub:alice/a", "timm:resnet18.a1_in1k") and req.layers == ("stage2.*.out",)
    assert ComparisonRequest.from_json(req.to_json(), allow_paths=False) == req  # round trip
    _refused(ok | {"colour": "red"}, "colour", "not a request field")
    _refused(ok | {"layers": ["stage2/../*"]}, "layers[0]", "characters a layer glob does not use")
    _refused(ok | {"layers": ["x" * 101]}, "layers[0]", "longer than 100")
    _refused(ok | {"layers": ["*"] * 33}, "layers", "1 to 32 globs")
    _refused(ok | {"examples": 0}, "examples", "out of range")
    _refused(ok | {"examples": -5}, "examples", "out of range")
    _refused(ok | {"examples": 2.5}, "examples", "not a whole number")
    _refused(ok | {"passes": True}, "passes", "not a whole number")
    _refused(ok | {"batch_size": 3}, "batch_size", "n > 3")
    _refused(ok | {"refs": ["hf-hub:alice/a"]}, "refs", "2 to 32")
    _refused(ok | {"refs": "hf-hub:alice/a"}, "refs", "not a list")
    _refused(ok | {"kind": "blocks", "refs": ["hf-hub:a/b"], "labels": None, "options": {"min_size": 0}},
             "options.min_size", "out of range")
    _refused(ok | {"options": {"pc_examples": 10}}, "options.pc_examples", "no option")
    _refused(ok | {"fmt": "gif"}, "fmt", "unknown")
    # the service (allow_paths=False) never opens a path on its machine; the CLI may
    for ref in (str(trained_run), f"local-dir:{trained_run}", "local-dir:/etc"):
        _refused(ok | {"refs": [ref, "hf-hub:alice/a"]}, "refs[0]", "names a folder on the server", allow_paths=False)
        assert ComparisonRequest.from_json(ok | {"refs": [ref, "hf-hub:alice/a"]}).refs[0] == ref
    (tmp_path / "models.txt").write_text("hf-hub:alice/a\n")
    sides = {"kind": "agreement", "refs": [f"@{tmp_path / 'models.txt'}", "population:zoo"]}
    _refused(sides, "refs[0]", "names a file on the server", allow_paths=False)
    _refused(sides | {"refs": [f"hf-hub:alice/a+{trained_run}", "population:zoo"]}, "refs[0]", "folder on the server",
             allow_paths=False)
    assert ComparisonRequest.from_json(sides | {"refs": ["hf-hub:a/b+hf-hub:a/c", "registry:depth=8"]}, allow_paths=False)
    _refused({"kind": "agreement", "refs": ["hf-hub:a/b", "hf-hub:a/c"], "layers": ["*.out"]}, "layers", "does not apply")
    with pytest.raises(InvalidRequestError, match="not an object"):
        ComparisonRequest.from_json(["cka"])
