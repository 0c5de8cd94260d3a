"""The comparison commands as a user runs them on checkpoint folders: files written, provenance, errors."""

import json

import numpy as np
from typer.testing import CliRunner

from hubcompare.cli import app
from hubcompare.similarity.results import CKAResult

runner = CliRunner()


def test_cross_cka_writes_heatmap_and_provenance(trained_run, tmp_path):
    out = tmp_path / "cross"
    r = runner.invoke(app, ["cross-cka", str(trained_run), f"local-dir:{trained_run}", "--layers", "stem", "--layers", "*.out",
                            "--batch-size", "100", "--passes", "2", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "mean diagonal CKA" in r.output
    assert (out / "cka.png").stat().st_size > 10_000
    res = CKAResult.load(out / "cka.json")
    assert res.layers_a == ["stem", "stage1.block1.out", "stage2.block1.out", "stage3.block1.out"]
    assert np.allclose(np.diag(res.value), 1.0)  # the same model twice, shuffled passes
    prov = json.loads((out / "cka.json").read_text())["provenance"]
    assert prov["dataset"]["name"] == "digits" and len(prov["dataset"]["fingerprint"]) == 16
    assert prov["batch_size"] == 100 and prov["passes"] == 2 and prov["num_batches"] == 10
    assert prov["models"][0]["weights_sha256"] and prov["models"][0]["ref"] == str(trained_run)
    assert "torch" in prov["package_versions"]
    assert prov["device"]["type"] == "cpu" and prov["arithmetic"]["pipeline"] == "cpu"
    assert prov["arithmetic"]["forward_and_grams"] == "float32, TF32 off"


def test_cka_and_blocks_commands(trained_run, tmp_path):
    r = runner.invoke(app, ["cka", str(trained_run), "--batch-size", "128", "--out", str(tmp_path / "within")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "within" / "cka.png").is_file()
    r = runner.invoke(app, ["cka", str(trained_run), "--batch-size", "128", "--out", str(tmp_path / "on-cpu"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    auto, cpu = CKAResult.load(tmp_path / "within" / "cka.json"), CKAResult.load(tmp_path / "on-cpu" / "cka.json")
    if auto.provenance["device"]["type"] == "cpu":  # auto is the CPU here: the very same numbers
        assert np.array_equal(auto.value, cpu.value, equal_nan=True)
    assert np.allclose(auto.value, cpu.value, atol=1e-5, equal_nan=True) and cpu.provenance["device"]["type"] == "cpu"
    r = runner.invoke(app, ["blocks", str(trained_run), "--batch-size", "128", "--pc-examples", "256", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "b" / "blocks.json").read_text())
    assert len(report["pc1_fraction"]) == len(report["layers"]) == 4  # stem + 3 block outputs of a ResNet-8
    assert all(0 < f < 1 for f in report["pc1_fraction"])
    assert (tmp_path / "b" / "blocks.png").is_file()


def test_compare_errors(trained_run):
    r = runner.invoke(app, ["cross-cka", str(trained_run), str(trained_run), "--batch-size", "3"])
    assert r.exit_code == 2 and "n > 3" in r.output
    r = runner.invoke(app, ["cka", str(trained_run), "--layers", "layer4.*"])
    assert r.exit_code == 2 and "match no layer" in r.output
    r = runner.invoke(app, ["cross-cka", str(trained_run)])
    assert r.exit_code == 2 and "at least two" in r.output
    r = runner.invoke(app, ["layers", str(trained_run), "--layers", "*.branch"])
    assert r.exit_code == 0 and "stage3.block1.branch" in r.output and "stage1.block1.out" not in r.output


def test_blocks_names_constant_layers_of_a_collapsed_model(trained_run, tmp_path):
    """A layer that outputs the same values for every example has no PC1 share: say which, don't print nan."""
    import torch

    from hubcompare.models.checkpoint import load_checkpoint
    from hubcompare.models.weights import load_model, write_checkpoint

    ckpt = load_checkpoint(trained_run)
    model = load_model(ckpt)
    block = model.stages[2][0]
    with torch.no_grad():  # shortcut -> 0, branch -> -1: relu(0 - 1) = 0 for every input
        block.shortcut.weight.zero_(), block.shortcut.bias.zero_()
        block.bn2.weight.zero_(), block.bn2.bias.fill_(-1.0)
    write_checkpoint(tmp_path / "collapsed", model, ckpt.meta)
    r = runner.invoke(app, ["blocks", str(tmp_path / "collapsed"), "--batch-size", "128", "--pc-examples", "256",
                            "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "1 layer(s) constant on every example" in text and "stage3.block1.out" in text
    assert "max nan" not in text and "median" in text
    report = json.loads((tmp_path / "b" / "blocks.json").read_text())
    assert report["blocks"] == [] and report["pc1_fraction"][-1] is None  # undefined: null in strict JSON
    assert report["constant_layers"] == ["stage3.block1.out"]
