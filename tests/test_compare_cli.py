"""The comparison commands as a user runs them on checkpoint folders: files written, provenance, errors, and what
they print: whole names at 80 columns, --json, labels, figure formats, the batch plan behind the standard errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
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
    # the same request: --recompute, else the store hands back the first result (the device is not in its key)
    r = runner.invoke(app, ["cka", str(trained_run), "--batch-size", "128", "--out", str(tmp_path / "on-cpu"), "--device", "cpu",
                            "--recompute"])
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
    assert "1 layer constant on every example" in text and "stage3.block1.out" in text
    assert "max nan" not in text and "median" in text
    report = json.loads((tmp_path / "b" / "blocks.json").read_text())
    assert report["blocks"] == [] and report["pc1_fraction"][-1] is None  # undefined: null in strict JSON
    assert report["constant_layers"] == ["stage3.block1.out"]


def _hubcompare(*args: str, columns: int = 80) -> subprocess.CompletedProcess:
    """The command as a user pipes it (stdout not a terminal, COLUMNS=80): stdout and stderr apart."""
    env = dict(os.environ, COLUMNS=str(columns), TERM="dumb")
    return subprocess.run([sys.executable, "-c", "from hubcompare.cli.main import main; main()", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _long_named_copies(trained_run, tmp_path, n: int):
    """Copies of the session's checkpoint in folders whose paths run past 80 columns (seeds told apart in config.json)."""
    out = []
    for i in range(n):
        d = tmp_path / "a-checkpoint-folder-name-long-enough-to-be-cut-at-eighty-columns" / f"digits-r8-copy-{i}"
        shutil.copytree(trained_run, d)
        config = json.loads((d / "config.json").read_text())
        config["hubcompare"]["seed"] = 100 + i
        (d / "config.json").write_text(json.dumps(config))
        out.append(d)
    return out


@pytest.mark.slow  # a `hubcompare` process piped at 80 columns (~6 s)
def test_piped_output_keeps_every_name_and_path_whole_and_json_matches_the_file(trained_run, tmp_path):
    """At 80 columns nothing a user copies is cut or broken: layer names, references, written paths; --json prints
    the written result on stdout and nothing else (progress and the file list go to stderr)."""
    a, b = _long_named_copies(trained_run, tmp_path, 2)
    out = tmp_path / "an-output-folder-whose-path-is-also-longer-than-the-terminal-is-wide"
    r = _hubcompare("cross-cka", str(a), f"local-dir:{b}", "--layers", "stem", "--layers", "*.out", "--layers", "*.branch",
                    "--out", str(out), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout and "..." not in r.stdout
    lines = r.stdout.splitlines()
    res = json.loads((out / "cka.json").read_text())
    for name in res["layers_a"]:
        assert any(name in line.split() for line in lines), name
    for ref in (str(a), f"local-dir:{b}"):
        assert any(ref in line for line in lines), ref
    for f in ("cka.npz", "cka.json", "cka.png"):
        assert any(line.strip() == str(out / f) for line in lines), f  # each written path whole, on its own line
    # default labels: the card's name, told apart by the seed; default batch plan: 8 minibatches of 500 examples
    assert res["label_a"] == "ResNet-8 (1x), seed 100" and res["label_b"] == "ResNet-8 (1x), seed 101"
    plan = res["provenance"]["batch_plan"]
    assert plan == {"batch_size": 63, "chosen": "auto", "num_examples": 500, "passes": 1, "batches_per_pass": 8,
                    "num_batches": 8, "standard_error": "jackknife"}
    assert res["provenance"]["batch_size"] == 63 and res["provenance"]["num_batches"] == 8
    assert "batch 63 (chosen for the standard errors)" in r.stdout and "± n/a" not in r.stdout

    r = runner.invoke(app, ["cka", str(a), "--json", "--out", str(tmp_path / "within"), "--device", "cpu", "--label", "my model"])
    assert r.exit_code == 0, r.output
    printed, written = json.loads(r.stdout), json.loads((tmp_path / "within" / "cka.json").read_text())
    assert printed["cka"] == written["cka"] and printed["se"] == written["se"] and printed["label_a"] == "my model"
    assert printed["files"] == [str(tmp_path / "within" / f) for f in ("cka.npz", "cka.json", "cka.png")]
    assert str(tmp_path / "within" / "cka.png") in r.stderr and "CKA on digits" in r.stderr


def test_labels_formats_and_three_models(trained_run, tmp_path):
    """--label names the models in the figure's text, the JSON and the file names; --format svg/pdf writes that format;
    three models give one file set per pair, named by labels, and a grid of every pair."""
    runs = _long_named_copies(trained_run, tmp_path, 3)
    out = tmp_path / "three"
    r = runner.invoke(app, ["cross-cka", *map(str, runs), "--layers", "*.out", "--label", "deep net", "--label", "wide net",
                            "--label", "third", "--format", "svg", "--out", str(out), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    assert [m["label"] for m in printed["models"]] == ["deep net", "wide net", "third"]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["cka-grid.svg"] + [f"cka-{x}-vs-{y}.{e}" for x, y in (("deep_net", "wide_net"), ("deep_net", "third"),
                                                                                     ("wide_net", "third")) for e in ("json", "npz", "svg")])
    pair = json.loads((out / "cka-deep_net-vs-third.json").read_text())
    assert pair["label_a"] == "deep net" and pair["label_b"] == "third"
    assert pair["cka"] == printed["pairs"][1]["cka"]
    svg = (out / "cka-deep_net-vs-third.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "deep net (model A): layer" in svg and "third (model B): layer" in svg and str(tmp_path) not in svg
    grid = (out / "cka-grid.svg").read_text()
    assert all(f"{x}: layer" in grid for x in ("deep net", "wide net", "third"))

    r = runner.invoke(app, ["cka", str(runs[0]), "--format", "pdf", "--out", str(tmp_path / "pdf"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pdf" / "cka.pdf").read_bytes().startswith(b"%PDF") and not (tmp_path / "pdf" / "cka.png").exists()
    r = runner.invoke(app, ["cross-cka", str(runs[0]), str(runs[1]), "--label", "only one"])
    assert r.exit_code == 2 and "1 label for 2 models" in " ".join(r.output.split())


def test_standard_errors_need_minibatches_and_no_block_is_a_sentence(trained_run, tmp_path):
    """A batch that leaves 2 minibatches of the 500 examples: warned, SEs printed n/a, recorded; a model without blocks
    gets a sentence saying what was checked, not an empty table."""
    r = runner.invoke(app, ["cross-cka", str(trained_run), str(trained_run), "--batch-size", "256", "--layers", "*.out",
                            "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "warning: 2 minibatches of 256: the jackknife standard error needs at least 3" in text
    assert "± n/a" in text and "± nan" not in text and "± 0.0000" not in text
    plan = json.loads((tmp_path / "x" / "cka.json").read_text())["provenance"]["batch_plan"]
    assert plan["chosen"] == "given" and plan["num_batches"] == 2 and plan["standard_error"] == "none"
    r = runner.invoke(app, ["cka", str(trained_run), "--batch-size", "100", "--out", str(tmp_path / "y"), "--device", "cpu"])
    assert r.exit_code == 0 and "only 5 minibatches of 100: the jackknife standard errors are rough" in " ".join(r.output.split())

    r = runner.invoke(app, ["blocks", str(trained_run), "--min-size", "5", "--pc-examples", "128", "--out", str(tmp_path / "b"),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "No block found in ResNet-8 (1x)" in text and "checked its 4 layers for a run of at least 5 layers" in text
    assert "w/o PC1" not in text and "first layer" not in text  # the sentence, not an empty table
    assert json.loads((tmp_path / "b" / "blocks.json").read_text())["blocks"] == []
