"""The command line as a user drives it: train, info, eval, layers, and the errors they print."""

import json

from typer.testing import CliRunner

from hubcompare.cli import app

runner = CliRunner()


def test_train_info_eval_layers(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "digits", "--depth", "8", "--epochs", "3", "--seed", "2", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output and "epoch    3/3" in r.output and " on cpu " in r.output
    assert "3 epochs" in r.output
    # the last bar counts test examples (digits' 500), not training steps; every line fits 80 columns, no ellipsis
    last_bar = [line for line in r.output.splitlines() if "test split" in line]
    assert last_bar and "500/500" in last_bar[-1] and "examples" in last_bar[-1], r.output
    assert "…" not in r.output and max(map(len, r.output.splitlines())) <= 80, r.output
    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0, r.output
    assert "ResNet-8 (1x) on digits, seed 2" in r.output and "depth-8" in r.output
    r = runner.invoke(app, ["info", str(out), "--json"])
    block = json.loads(r.output)
    assert block["seed"] == 2 and block["device"]["type"] == "cpu"  # the device it trained on
    r = runner.invoke(app, ["eval", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "1.0000" in r.output  # argmax agreement with the stored predictions
    assert "device" in r.output and "cpu" in r.output
    r = runner.invoke(app, ["eval", str(out), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # nothing but the JSON on stdout
    assert report["agreement_with_stored"] == 1.0 and report["examples"] == 500 and report["commit_sha"] is None
    assert report["accuracy"] == block["test_accuracy"] and report["dataset"]["name"] == "digits"
    r = runner.invoke(app, ["layers", str(out), "--layers", "*.out"])
    assert r.exit_code == 0 and "stage3.block1.out" in r.output and "stage1.block1.branch" not in r.output


def test_errors_are_one_clear_line(tmp_path):
    r = runner.invoke(app, ["train", "digits", "--depth", "21", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert "6n+2" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "--data-dir" in r.output
    r = runner.invoke(app, ["info", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no folder" in r.output and "missing exists" in " ".join(r.output.split())


def test_interrupt_is_one_short_line_and_exit_130(monkeypatch, tmp_path):
    import hubcompare.training.recipes as recipes

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "load_recipe", interrupted)
    r = runner.invoke(app, ["train", "digits", "--out", str(tmp_path / "x")])
    assert r.exit_code == 130 and r.output.strip() == "Interrupted." and "Traceback" not in r.output
