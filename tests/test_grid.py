"""Training grids (``hubcompare grid``): the grid file, and real runs on both backends with real faults.

A 4-run digits grid (ResNet-8, 10 epochs, seconds per run) runs on local worker processes and on a
real local Ray (``ray.init(num_cpus=2)``): one run's worker is killed with SIGKILL mid-run (it is
retried and resumes, losing only its current epoch), one run fails every attempt (its folder is taken
by a file) and is reported without stopping the others; a rerun skips what finished. The same seed
gives the same weights, bit for bit, whichever backend ran it (and whether or not it was killed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port

from hubcompare.errors import GridBackendError, GridSpecError
from hubcompare.training.grid import run_grid
from hubcompare.training.gridspec import load_grid, parse_grid
from hubcompare.training.runstate import inspect_run, set_aside

FAST = {"model.depth": 8, "train.epochs": 10, "train.warmup_epochs": 1}
SEEDS = [0, 1, 2, 3]
NAMES = [f"digits-d8-w1-f1-s{s}" for s in SEEDS]


def _spec(out: Path, **overrides):
    return parse_grid({"population": "zoo", "recipe": "digits", "overrides": {**FAST, **overrides}, "axes": {"seed": SEEDS}},
                      "test-grid", out=out)


class Faults:
    """Kill ``victim``'s worker (kill -9) at its first finished epoch; record every event."""

    def __init__(self, victim: str):
        self.victim, self.killed, self.events = victim, None, []

    def __call__(self, e) -> None:
        self.events.append(e)
        if e.kind == "epoch" and e.run == self.victim and e.attempt == 1 and self.killed is None:
            self.killed = e.epoch
            os.kill(e.pid, signal.SIGKILL)


def _weights(run_dir: Path) -> bytes:
    return (run_dir / "model.safetensors").read_bytes()


def _check_faulty_grid(result, faults: Faults, out: Path, failing: str) -> None:
    by = {r.name: r for r in result.runs}
    assert faults.killed is not None, "the victim was never seen training"
    victim = by[faults.victim]
    assert victim.status == "done" and victim.attempts == 2, victim
    assert len(victim.resumed_at) == 1 and victim.resumed_at[0] >= faults.killed, victim  # lost only the epoch under way
    assert "killed by signal 9" in victim.errors[0] or "WorkerCrashedError" in victim.errors[0], victim.errors
    assert [n["attempt"] for n in victim.ran_on] == [1, 2] and all(n["host"] and n["pid"] for n in victim.ran_on), victim.ran_on
    bad = by[failing]
    assert bad.status == "failed" and bad.attempts == 2 and "is a file, not a folder" in bad.errors[-1], bad
    assert {r.name for r in result.finished} == set(NAMES) - {failing}
    assert all(0.5 < r.test_accuracy <= 1 for r in result.finished)
    kinds = [(e.kind, e.run) for e in faults.events]
    assert ("retry", faults.victim) in kinds and ("retry", failing) in kinds and ("failed", failing) in kinds
    assert faults.events[-1].kind == "finish" and faults.events[-1].status.failed == 1
    assert any(e.status.eta_s is not None for e in faults.events if e.kind == "epoch")
    log = (out / "logs" / f"{faults.victim}.log").read_text()
    assert "attempt 1 lost" in log and "resuming after epoch" in log and "done: test accuracy" in log
    manifest = json.loads((out / "grid.json").read_text())
    assert {r["name"]: r["status"] for r in manifest["runs"]} == {r.name: r.status for r in result.runs}


def _rerun_skips(spec, failing: str, **kw) -> None:
    """A rerun trains nothing that finished; once the obstacle is gone, only the failed run trains."""
    before = {r["name"]: r["ran_on"] for r in json.loads((spec.out / "grid.json").read_text())["runs"]}
    again = run_grid(spec, max_retries=0, **kw)
    assert {r.name: r.status for r in again.runs} == {n: "failed" if n == failing else "skipped" for n in NAMES}
    for r in again.runs:  # a skipped run keeps the record of where it was trained (the manifest is rewritten)
        assert r.status != "skipped" or (r.ran_on == before[r.name] and r.ran_on and r.ran_on[-1]["grid_session"]), r
    (spec.out / failing).unlink()
    last = run_grid(spec, max_retries=0, **kw)
    assert {r.name: r.status for r in last.runs} == {n: "done" if n == failing else "skipped" for n in NAMES}


# --- the grid file ----------------------------------------------------------------------------
def test_axes_expand_to_named_validated_runs(tmp_path):
    spec = parse_grid({"recipe": "digits", "overrides": {"train.epochs": 3}, "axes": {"depth": [8, 14], "width": [1, 2.0],
                       "fraction": ["1/2"], "train.lr": [0.05, 0.1]}}, "g", out=tmp_path, default_population="p")
    assert len(spec.points) == 8 and spec.population == "p" and spec.out == tmp_path
    assert spec.points[0].name == "digits-d8-w1-f0.5-s0-lr0.05"
    assert spec.points[-1].name == "digits-d14-w2-f0.5-s0-lr0.1"
    assert spec.points[-1].recipe["model"]["width"] == 2 and isinstance(spec.points[-1].recipe["model"]["width"], int)
    assert len({p.recipe.hash for p in spec.points}) == 8


def test_exclude_leaves_out_matching_points():
    spec = parse_grid({"recipe": "digits", "axes": {"fraction": ["1/4", "1/2"], "depth": [8, 14], "width": [1, 2]},
                       "exclude": [{"depth": 14, "width": 2}, {"fraction": 0.25, "depth": 8}]}, "g")
    names = [p.name for p in spec.points]
    assert names == ["digits-d14-w1-f0.25-s0", "digits-d8-w1-f0.5-s0", "digits-d8-w2-f0.5-s0", "digits-d14-w1-f0.5-s0"]
    assert spec.exclude == ({"model.depth": 14, "model.width": 2}, {"data.fraction": 0.25, "model.depth": 8})
    bundled = load_grid("cifar10jpeg-capacity-vs-data")
    assert len(bundled.points) == 26 and bundled.points[0].name == "cifar10-jpeg-d20-w1-f0.00390625-s0"


def test_bundled_grid_and_relative_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    zoo = load_grid("digits-zoo")
    assert len(zoo.points) == 8 and zoo.out == Path("runs/digits-zoo")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.yaml").write_text("model: {depth: 8, width: 1}\ndata: {dataset: digits}\n"
                                                "train: {epochs: 2, batch_size: 64, lr: 0.05}\n")
    (tmp_path / "sub" / "g.yaml").write_text("recipe: mine.yaml\naxes: {seed: [5]}\n")
    spec = load_grid(tmp_path / "sub" / "g.yaml")
    assert spec.population == "g" and spec.points[0].recipe["train"]["seed"] == 5 and spec.points[0].recipe["train"]["epochs"] == 2


@pytest.mark.parametrize("raw, expect", [
    ([1, 2], "expected a mapping"),
    ({"axes": {"seed": [0]}}, "'recipe' is required"),
    ({"recipe": "digits", "axes": {"colour": ["red"]}}, "unknown axis 'colour'"),
    ({"recipe": "digits", "axes": {"seed": []}}, "non-empty list"),
    ({"recipe": "digits", "axes": {"seed": 3}}, "non-empty list"),
    ({"recipe": "digits", "axes": {"seed": [0, 0]}}, "are the same run"),
    ({"recipe": "digits", "axes": {"fraction": [0.5, "1/2"]}}, "are the same run"),
    ({"recipe": "digits", "axes": {"seed": [0], "train.seed": [1]}}, "given twice"),
    ({"recipe": "digits", "overrides": {"seed": 1}, "axes": {"seed": [0]}}, "given twice"),
    ({"recipe": "digits", "axes": {"depth": [8, 21]}}, "run model.depth=21: .*6n\\+2"),
    ({"recipe": "digits", "axes": {"dataset": ["nope"]}}, "unknown dataset 'nope'"),
    ({"recipe": "digits", "population": "a/b"}, "'population'"),
    ({"recipe": "digits", "colour": 1}, "unknown key"),
    ({"recipe": "digits", "axes": {"seed": [0]}, "exclude": {"seed": 0}}, "'exclude' must be a list of mappings"),
    ({"recipe": "digits", "axes": {"seed": [0]}, "exclude": [{"depth": 8}]}, "not an axis of this grid"),
    ({"recipe": "digits", "axes": {"seed": [0, 1]}, "exclude": [{"seed": 2}]}, "a value axis 'seed' does not take"),
    ({"recipe": "digits", "axes": {"seed": [0]}, "exclude": [{"seed": 0}]}, "leaves no run"),
    ({"recipe": "digits", "axes": {"seed": list(range(101)), "train.lr": [0.01 * i for i in range(1, 101)]}}, "more than 10,000"),
    ({"recipe": "digits", "until_fit": {"train_accuracy": 0.99}}, "exactly the keys train_accuracy and epochs"),
    ({"recipe": "digits", "until_fit": [600]}, "exactly the keys train_accuracy and epochs"),
    ({"recipe": "digits", "until_fit": {"train_accuracy": 1.5, "epochs": [600]}}, "train_accuracy = 1.5 must be a number in"),
    ({"recipe": "digits", "until_fit": {"train_accuracy": True, "epochs": [600]}}, "must be a number in"),
    ({"recipe": "digits", "until_fit": {"train_accuracy": 0.99, "epochs": [600, 600]}}, "increasing epoch counts"),
    ({"recipe": "digits", "until_fit": {"train_accuracy": 0.99, "epochs": []}}, "increasing epoch counts"),
    ({"recipe": "digits", "until_fit": {"train_accuracy": 0.99, "epochs": [1.5]}}, "increasing epoch counts"),
    ({"recipe": "digits", "overrides": {"train.epochs": 10}, "until_fit": {"train_accuracy": 0.99, "epochs": [10, 20]}},
     "must each be more than the run's 10 epochs"),
])
def test_bad_grid_files_are_refused(raw, expect):
    with pytest.raises(GridSpecError, match=expect):
        parse_grid(raw, "g")


# --- the fit rule (until_fit) -----------------------------------------------------------------
RULE = {"train_accuracy": 0.99, "epochs": [20, 40]}


def test_fit_rule_ladders_the_epochs_and_keeps_the_recipe_hash():
    """A grid with the rule trains the same first rung (same recipe hash) as the grid without it: runs already
    trained count as rung 0."""
    plain = _spec(Path("p"))
    fit = parse_grid({"population": "zoo", "recipe": "digits", "overrides": FAST, "axes": {"seed": SEEDS}, "until_fit": RULE},
                     "test-grid", out=Path("p"))
    assert [p.recipe.hash for p in fit.points] == [p.recipe.hash for p in plain.points]
    assert [r["train"]["epochs"] for r in fit.points[0].ladder] == [10, 20, 40] and plain.points[0].ladder == (plain.points[0].recipe,)
    assert fit.points[0].ladder[1].hash != fit.points[0].ladder[0].hash
    assert fit.points[0].ladder[2].to_dict() == fit.points[0].recipe.with_overrides({"train.epochs": 40}).to_dict()
    assert fit.until_fit.fits(0.99) and not fit.until_fit.fits(0.989) and not fit.until_fit.fits(None)
    assert "20, then 40 epochs" in fit.until_fit.describe()


def _fake_checkpoint(run_dir: Path, recipe, train_accuracy: float) -> None:
    """What the grid reads of a finished checkpoint: config.json's hubcompare block."""
    run_dir.mkdir(parents=True)
    block = {"recipe_hash": recipe.hash, "epochs": recipe["train"]["epochs"], "train_accuracy": train_accuracy,
             "test_accuracy": 0.5, "wall_time_s": 1.0, "resumed_at_epochs": []}
    (run_dir / "config.json").write_text(json.dumps({"architecture": "resnet", "hubcompare": block}))


def _fake_resume(run_dir: Path, recipe) -> None:
    """A resume state's safetensors header (all the grid reads of it)."""
    header = json.dumps({"__metadata__": {"recipe_hash": recipe.hash, "state": "{}"}}).encode()
    (run_dir / ".resume").mkdir(parents=True)
    (run_dir / ".resume" / "state.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)


def test_run_folders_say_which_rung_a_run_is_at(tmp_path):
    spec = parse_grid({"recipe": "digits", "overrides": FAST, "axes": {"seed": [0]}, "until_fit": RULE}, "g", out=tmp_path)
    point, rule = spec.points[0], spec.until_fit
    run_dir = tmp_path / point.name
    assert (inspect_run(point, run_dir, rule, tmp_path).state, inspect_run(point, run_dir, rule, tmp_path).rung) == ("new", 0)
    _fake_checkpoint(run_dir, point.ladder[0], 0.98)  # rung 0 finished, under-fit
    st = inspect_run(point, run_dir, rule, tmp_path)
    assert (st.state, st.rung) == ("underfit", 0)
    kept = set_aside(point, run_dir, tmp_path, st)
    assert kept == {"rung": 0, "epochs": 10, "recipe_hash": point.recipe.hash, "train_accuracy": 0.98, "test_accuracy": 0.5,
                    "kept": f"underfit/{point.name}-e10"}
    assert not run_dir.exists() and (tmp_path / kept["kept"] / "config.json").is_file()
    st = inspect_run(point, run_dir, rule, tmp_path)  # interrupted between setting aside and training: the next rung
    assert (st.state, st.rung, st.kept) == ("new", 1, [kept])
    _fake_resume(run_dir, point.ladder[1])  # rung 1 under way
    assert (inspect_run(point, run_dir, rule, tmp_path).state, inspect_run(point, run_dir, rule, tmp_path).rung) == ("resume", 1)
    shutil.rmtree(run_dir)
    _fake_checkpoint(run_dir, point.ladder[1], 0.995)  # rung 1 fits: finished
    assert (inspect_run(point, run_dir, rule, tmp_path).state, inspect_run(point, run_dir, rule, tmp_path).rung) == ("finished", 1)
    shutil.rmtree(run_dir)
    _fake_checkpoint(run_dir, point.ladder[2], 0.5)  # the last rung is finished whatever its accuracy
    assert inspect_run(point, run_dir, rule, tmp_path).state == "finished"
    shutil.rmtree(run_dir)
    _fake_checkpoint(run_dir, point.ladder[0].with_overrides({"train.epochs": 30}), 0.5)  # no rung's recipe
    st = inspect_run(point, run_dir, rule, tmp_path)
    assert (st.state, st.rung) == ("stale", 1) and "another recipe" in st.why
    shutil.rmtree(run_dir)
    _fake_checkpoint(run_dir, point.ladder[0], 0.97)  # rung 0 again (trained anew): kept beside the first, not over it
    assert set_aside(point, run_dir, tmp_path, inspect_run(point, run_dir, rule, tmp_path))["kept"] == f"underfit/{point.name}-e10-2"


def test_a_rerun_reads_every_rung_from_the_folders(tmp_path):
    """Nothing to train: finished rungs (fitting, or the last) are skipped and grid.json records each rung."""
    spec = parse_grid({"population": "zoo", "recipe": "digits", "overrides": FAST, "axes": {"seed": SEEDS[:3]}, "until_fit": RULE},
                      "g", out=tmp_path)
    p0, p1, p2 = spec.points
    _fake_checkpoint(tmp_path / p0.name, p0.ladder[0], 0.995)  # fits at the recipe's 10 epochs
    _fake_checkpoint(tmp_path / "underfit" / f"{p1.name}-e10", p1.ladder[0], 0.9)  # fit at 20
    _fake_checkpoint(tmp_path / p1.name, p1.ladder[1], 0.999)
    for i, acc in enumerate((0.9, 0.95)):  # never fit: the last rung stands
        _fake_checkpoint(tmp_path / "underfit" / f"{p2.name}-e{p2.ladder[i]['train']['epochs']}", p2.ladder[i], acc)
    _fake_checkpoint(tmp_path / p2.name, p2.ladder[2], 0.97)
    result = run_grid(spec)  # nothing to train: no worker starts
    by = {r.name: r for r in result.runs}
    assert all(r.status == "skipped" for r in result.runs)
    assert [(r.epochs, [g["train_accuracy"] for g in r.rungs]) for r in result.runs] == [
        (10, [0.995]), (20, [0.9, 0.999]), (40, [0.9, 0.95, 0.97])]
    assert by[p2.name].rungs[1]["kept"] == f"underfit/{p2.name}-e20" and by[p2.name].rungs[2]["kept"] is None
    manifest = json.loads((tmp_path / "grid.json").read_text())
    assert manifest["until_fit"]["epochs"] == [20, 40] and "train accuracy < 0.99" in manifest["until_fit"]["rule"]
    assert [r["epochs"] for r in manifest["runs"]] == [10, 20, 40]
    assert [[g["epochs"] for g in r["rungs"]] for r in manifest["runs"]] == [[10], [10, 20], [10, 20, 40]]


LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))


@pytest.mark.parametrize("text, expect", [
    ("recipe: digits\nl0: &l0 [lol]\n" + LAUGHS, "expands to more than 1,000,000 YAML nodes"),
    ("recipe: digits\naxes: {seed: &a [0, *a]}\n", "contains itself"),
    ("recipe: digits\nv: &v 1\nx: [" + ", ".join(["*v"] * 300) + "]\n", "more than 256 YAML aliases"),
    ("recipe: digits\nx: " + "[" * 5000 + "]" * 5000 + "\n", "values nested more than 32 deep"),
    ("recipe: digits\naxes: {seed: [0]}\nrecipe: cifar10\n", "key 'recipe' is given twice \\(lines 1 and 3\\): keep one"),
    ("recipe: digits\noverrides:\n  train.epochs: 2\n  train.epochs: 3\n", "key 'train.epochs' is given twice"),
    ("recipe: digits\nout: /\n", "'out' = '/' must be a folder below the working folder.*absolute path in --out"),
    ("recipe: digits\nout: ..\n", "'out' = '..' must be a folder below the working folder"),
    ("recipe: digits\nout: runs/../..\n", "below the working folder"),
    ("recipe: digits\nout: .\n", "below the working folder"),
    ("recipe: digits\nout: ~/elsewhere\n", "below the working folder"),
    ("recipe: digits\nout: /tmp/elsewhere\n", "below the working folder"),
    ("recipe: digits\nout: [runs]\n", "below the working folder"),
    ("recipe: digits\n# " + "x" * (1 << 20) + "\n", "over 1024 KiB, too large for a grid file"),
])
def test_hostile_grid_files_are_refused(tmp_path, text, expect):
    (tmp_path / "g.yaml").write_text(text)
    started = time.perf_counter()
    with pytest.raises(GridSpecError, match=expect):
        load_grid(tmp_path / "g.yaml")
    assert time.perf_counter() - started < 1.0


def test_the_grid_size_is_known_before_any_point_is_made():
    """A 10^6-value axis is refused by its length: its values are never looked at (the bad last one is not what is
    reported) and no point is made."""
    started = time.perf_counter()
    with pytest.raises(GridSpecError, match="more than 10,000 runs \\(at axis 'seed', 1,000,001 so far\\)"):
        parse_grid({"recipe": "digits", "axes": {"seed": [0] * 10**6 + [{"not": "a value"}]}}, "g")
    with pytest.raises(GridSpecError, match="'exclude' has 10,001 rules"):
        parse_grid({"recipe": "digits", "axes": {"seed": [0]}, "exclude": [{"seed": 0}] * 10_001}, "g")
    assert time.perf_counter() - started < 1.0


def test_out_is_confined_unless_the_command_line_gives_an_absolute_folder(tmp_path):
    raw = {"recipe": "digits", "out": "runs/./mine"}
    assert parse_grid(raw, "g").out == Path("runs/mine")
    assert parse_grid({**raw, "out": ".."}, "g", out=tmp_path).out == tmp_path  # the command line's absolute --out wins
    assert parse_grid(raw, "g", out="elsewhere/p").out == Path("elsewhere/p")
    with pytest.raises(GridSpecError, match="--out = '../p' must be a folder below the working folder.*give an absolute path"):
        parse_grid(raw, "g", out="../p")
    merged = "recipe: digits\naxes: {depth: [8, 14], width: [1, 2]}\nexclude: [&r {depth: 14, width: 2}, {<<: *r, width: 1}]\n"
    (tmp_path / "m.yaml").write_text(merged)  # a key a merge (<<) brings in may be given again: no duplicate
    assert load_grid(tmp_path / "m.yaml").exclude == ({"model.depth": 14, "model.width": 2}, {"model.depth": 14, "model.width": 1})


def test_missing_grid_file(tmp_path):
    with pytest.raises(GridSpecError, match="not found.*digits-zoo"):
        load_grid(tmp_path / "nope.yaml")


# --- running, without training ----------------------------------------------------------------
def test_a_folder_of_another_recipe_is_reported_not_trained(tmp_path, trained_run):
    spec = _spec(tmp_path)
    (tmp_path / NAMES[0]).symlink_to(trained_run, target_is_directory=True)  # a finished run of another recipe
    for name in NAMES[1:]:  # the others: finished checkpoints of the grid's own recipes (copied configs suffice)
        (tmp_path / name).mkdir()
        config = json.loads((trained_run / "config.json").read_text())
        config["hubcompare"]["recipe_hash"] = next(p.recipe.hash for p in spec.points if p.name == name)
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    result = run_grid(spec)  # nothing to train: no worker starts
    by = {r.name: r for r in result.runs}
    assert by[NAMES[0]].status == "failed" and by[NAMES[0]].attempts == 0
    assert "finished checkpoint of another recipe" in by[NAMES[0]].errors[0] and "(overwrite)" in by[NAMES[0]].errors[0]
    assert all(by[n].status == "skipped" for n in NAMES[1:])


def test_one_grid_per_population_folder(tmp_path):
    with open(tmp_path / ".grid.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(GridBackendError, match="another grid is running"):
            run_grid(_spec(tmp_path))


@pytest.mark.parametrize("kw, expect", [({"backend": "nope"}, "unknown backend"), ({"max_retries": -1}, "max_retries"),
                                        ({"workers": 0}, "workers"), ({"cpus_per_run": float("nan")}, "cpus_per_run")])
def test_bad_runner_settings(tmp_path, kw, expect):
    with pytest.raises(GridBackendError, match=expect):
        run_grid(_spec(tmp_path), **kw)


# --- real runs --------------------------------------------------------------------------------
@pytest.mark.slow  # ~30 s on 2 cores: three grid invocations, each starting a worker process
def test_a_run_that_does_not_fit_trains_again_and_a_stopped_ladder_resumes_its_rung(tmp_path):
    """Rung 0 (1 epoch) cannot reach train accuracy 1.0: it is kept in underfit/ and the run trains again from scratch
    for 3 epochs; the grid is stopped during that rung and a rerun resumes it (not rung 0, not from scratch). The
    weights are those of a plain, uninterrupted 3-epoch run."""
    fast = {"model.depth": 8, "train.epochs": 1, "train.warmup_epochs": 0}
    spec = parse_grid({"population": "fit", "recipe": "digits", "overrides": fast, "axes": {"seed": [0]},
                       "until_fit": {"train_accuracy": 1.0, "epochs": [3]}}, "g", out=tmp_path / "fit")
    name = spec.points[0].name
    seen = []

    def stop_in_rung_1(e) -> None:
        seen.append((e.kind, e.epochs, e.epoch))
        if e.kind == "epoch" and e.epochs == 3 and e.epoch == 1:
            raise KeyboardInterrupt  # as Ctrl-C in the CLI: the grid stops, the rung's resume state stays

    with pytest.raises(KeyboardInterrupt):
        run_grid(spec, workers=1, threads=1, on_event=stop_in_rung_1)
    assert ("refit", 3, 0) in seen and not any(kind == "done" for kind, *_ in seen)
    kept = tmp_path / "fit" / "underfit" / f"{name}-e1"
    block = json.loads((kept / "config.json").read_text())["hubcompare"]
    assert block["epochs"] == 1 and block["train_accuracy"] < 1.0 and (kept / "model.safetensors").is_file()
    assert (tmp_path / "fit" / name / ".resume").is_dir() and not (tmp_path / "fit" / name / "config.json").exists()
    stopped = json.loads((tmp_path / "fit" / "grid.json").read_text())["runs"][0]
    assert (stopped["status"], stopped["rung"], stopped["epochs"]) == ("pending", 1, 3)

    result = run_grid(spec, workers=1, threads=1)  # a later session: resumes rung 1 after its first epoch
    r = result.runs[0]
    assert (r.status, r.rung, r.epochs, r.resumed_at) == ("done", 1, 3, [1]), r
    assert [(g["epochs"], g["kept"]) for g in r.rungs] == [(1, f"underfit/{name}-e1"), (3, None)]
    assert r.rungs[0]["train_accuracy"] == block["train_accuracy"] and r.rungs[1]["train_accuracy"] == r.train_accuracy
    assert json.loads((tmp_path / "fit" / name / "config.json").read_text())["hubcompare"]["epochs"] == 3
    assert "below the fit rule's 1: kept in underfit/" in (tmp_path / "fit" / "logs" / f"{name}.log").read_text()

    again = run_grid(spec)  # the last rung stands, fit or not: nothing trains
    assert (again.runs[0].status, again.runs[0].epochs, len(again.runs[0].rungs)) == ("skipped", 3, 2)

    plain = parse_grid({"population": "plain", "recipe": "digits", "overrides": {**fast, "train.epochs": 3}, "axes": {"seed": [0]}},
                       "g", out=tmp_path / "plain")
    run_grid(plain, workers=1, threads=1)
    assert _weights(tmp_path / "fit" / name) == _weights(tmp_path / "plain" / name)
    assert _weights(kept) != _weights(tmp_path / "plain" / name)


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory):
    """The 4-run grid on 2 local worker processes (1 thread each): seed 1 killed, seed 3 failing."""
    out = tmp_path_factory.mktemp("local-grid")
    spec = _spec(out)
    (out / NAMES[3]).write_text("a file where the run's folder should be\n")
    faults = Faults(NAMES[1])
    started = time.perf_counter()
    result = run_grid(spec, backend="local", workers=2, threads=1, max_retries=1, on_event=faults)
    return spec, result, faults, time.perf_counter() - started


@pytest.mark.slow  # ~10 s each on 2 cores: the fault-tolerance runs (CI runs them; the fast lane keeps the grid's unit tests)
def test_local_grid_survives_a_killed_worker_and_a_failing_run(local_grid):
    spec, result, faults, _ = local_grid
    _check_faulty_grid(result, faults, spec.out, NAMES[3])


@pytest.mark.slow  # ~10 s each on 2 cores: the fault-tolerance runs (CI runs them; the fast lane keeps the grid's unit tests)
def test_local_grid_rerun_skips_what_finished(local_grid):
    spec, *_ = local_grid
    _rerun_skips(spec, NAMES[3], backend="local", workers=2, threads=1)


@pytest.mark.slow  # ~10 s each on 2 cores: the fault-tolerance runs (CI runs them; the fast lane keeps the grid's unit tests)
def test_ray_grid_survives_a_killed_worker_and_a_failing_run_and_matches_local(local_ray, local_grid, tmp_path):
    spec = _spec(tmp_path)
    (tmp_path / NAMES[3]).write_text("a file where the run's folder should be\n")
    faults = Faults(NAMES[2])
    result = run_grid(spec, backend="ray", cpus_per_run=1, max_retries=1, on_event=faults)
    _check_faulty_grid(result, faults, tmp_path, NAMES[3])
    assert all(n["node_id"] and n["node_ip"] for r in result.finished for n in r.ran_on)  # which Ray node ran each attempt
    local_out = local_grid[0].out
    for name in NAMES[:3]:  # s1 was killed on the local pool, s2 on Ray: the same weights all the same
        assert _weights(tmp_path / name) == _weights(local_out / name), name
    assert local_ray.is_initialized()  # a Ray the caller started is left running
    _rerun_skips(spec, NAMES[3], backend="ray", cpus_per_run=1)
    if (local_out / NAMES[3] / "model.safetensors").is_file():  # trained by the local rerun test
        assert _weights(tmp_path / NAMES[3]) == _weights(local_out / NAMES[3])


@pytest.mark.slow  # it needs the fault-tolerance grid above (~15 s)
def test_cli_grid_skips_finished_runs_and_pushes_the_population(local_grid, hub, tmp_path, monkeypatch):
    """`hubcompare grid GRID --push`: the finished runs are skipped, then pushed and registered as a population."""
    from huggingface_hub import HfApi
    from typer.testing import CliRunner

    from hubcompare.cli.main import app
    from hubcompare.hub.registry import Registry

    spec = local_grid[0]
    if (spec.out / NAMES[3]).is_file():  # the rerun test removes the obstacle; without it, remove it here (it trains)
        (spec.out / NAMES[3]).unlink()
    grid_file = tmp_path / "zoo.yaml"
    grid_file.write_text(f"population: zoo\nrecipe: digits\noverrides: {json.dumps(FAST)}\naxes: {{seed: {SEEDS}}}\n")
    monkeypatch.setenv("HUBCOMPARE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    r = CliRunner().invoke(app, ["grid", str(grid_file), "--out", str(spec.out), "--threads", "1", "--device", "cpu",
                                 "--push", "--owner", "grid-owner", "--population", "grid-zoo"])
    assert r.exit_code == 0, r.output
    assert "skipped" in r.output and "grid.json" in r.output and "collection" in r.output
    ids = sorted(m.id for m in HfApi().list_models(author="grid-owner", filter=["population-grid-zoo"]))
    assert ids == [f"grid-owner/grid-zoo-{n}" for n in sorted(NAMES)]
    assert sorted(e.seed for e in Registry().query(population="grid-zoo")) == SEEDS


# --- a real two-node Ray cluster on this machine ----------------------------------------------
RAY_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",  # a lost node is noticed in seconds
           "RAY_USAGE_STATS_ENABLED": "0"}


def _ray_node(args: list[str], temp: Path, name: str, env: dict) -> subprocess.Popen:
    """``ray start --block`` for one node bound to 127.0.0.1 (through hubcompare.training.raynode, which keeps the address
    as given), in its own session (stopping it stops its raylet and workers), with its own --temp-dir and ports."""
    ports = [f"--{o}-port={free_port()}" for o in ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc",
                                                    "metrics-export", "runtime-env-agent")]
    cmd = [sys.executable, "-m", "hubcompare.training.raynode", "start", "--block", "--node-ip-address=127.0.0.1",
           f"--node-name={name}", f"--temp-dir={temp / name}", "--num-cpus=1", "--disable-usage-stats",
           *ports, *args]
    return subprocess.Popen(cmd, stdout=open(temp / f"{name}.log", "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _started(node: subprocess.Popen, log: Path, deadline: float) -> None:
    """Wait (bounded) for ``ray start`` to say the node is up."""
    while "Ray runtime started" not in log.read_text(errors="replace"):
        assert node.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)


def _stop(node: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop one node: its whole session (the ``ray start`` process, its raylet, its workers), nothing else."""
    try:
        os.killpg(node.pid, sig)
        node.wait(timeout=40)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=10)


@pytest.mark.slow  # ~2 min on 2 cores: a two-node Ray cluster, two runs, one node killed, then the same runs locally
def test_a_run_on_a_lost_ray_node_finishes_on_the_head_with_the_same_weights(tmp_path):
    """A real two-node Ray cluster on 127.0.0.1 (head and worker, one CPU each, their own temp folders); the grid
    (``hubcompare grid --backend ray --ray-address 127.0.0.1:PORT``) puts one run on each node; the worker node is
    killed (its whole process group: raylet and workers) mid-run; its run is retried on the head, resuming from its
    last epoch, and ends with the weights a local, uninterrupted run of the same recipe gives, tensor for tensor."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'hubcompare[ray]')")
    from safetensors.numpy import load_file

    temp = Path(tempfile.mkdtemp(prefix="hcray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, **RAY_ENV, "RAY_AUTH_MODE": "disabled"}  # a test cluster on 127.0.0.1 (not ~/.ray's token)
    gcs = free_port()
    overrides = {"model.depth": 8, "train.epochs": 12, "train.warmup_epochs": 1}
    grid_file = tmp_path / "pair.yaml"
    grid_file.write_text(f"population: pair\nrecipe: digits\noverrides: {json.dumps(overrides)}\naxes: {{seed: [0, 1]}}\n")
    out = tmp_path / "pair"
    head = _ray_node(["--head", f"--port={gcs}", "--include-dashboard=false"], temp, "head", env)
    nodes, driver = [head], None
    try:
        deadline = time.monotonic() + 120
        _started(head, temp / "head.log", deadline)
        worker = _ray_node([f"--address=127.0.0.1:{gcs}"], temp, "worker", env)
        nodes.append(worker)
        _started(worker, temp / "worker.log", deadline)  # registered: the grid's two runs go one to each node
        driver = subprocess.Popen([str(Path(sys.executable).parent / "hubcompare"), "grid", str(grid_file), "--backend", "ray",
                                   "--ray-address", f"127.0.0.1:{gcs}", "--cpus-per-run", "1", "--out", str(out),
                                   "--max-retries", "1", "--device", "cpu"],
                                  stdout=open(tmp_path / "driver.log", "w"), stderr=subprocess.STDOUT, env={**env, "COLUMNS": "250"})
        victim = None
        while victim is None and time.monotonic() < deadline + 120 and driver.poll() is None:
            for progress in (out / "logs").glob("*.progress.json") if (out / "logs").is_dir() else []:
                try:
                    state = json.loads(progress.read_text())
                except (OSError, ValueError):
                    continue
                if state.get("node", {}).get("node_name") == "worker" and state.get("epoch", 0) >= 1 and state["epoch"] < 10:
                    victim = (progress.name.removesuffix(".progress.json"), state["epoch"])
                    # The node is lost: its training process first (Ray starts workers outside the node's process
                    # group, and an orphan that outlives its raylet by a second can finish 12 short epochs and
                    # write the run as done), then raylet and everything else in the node's session at once.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(state["pid"], signal.SIGKILL)
                    _stop(worker, signal.SIGKILL)
                    break
            time.sleep(0.1)
        assert victim is not None, (tmp_path / "driver.log").read_text()[-3000:]
        assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp, ignore_errors=True)

    manifest = json.loads((out / "grid.json").read_text())
    by = {r["name"]: r for r in manifest["runs"]}
    name, killed_at = victim
    assert all(r["status"] == "done" for r in by.values()), by
    lost = by[name]
    assert [n["node_name"] for n in lost["ran_on"]] == ["worker", "head"] and lost["attempts"] == 2, lost
    assert lost["ran_on"][0]["node_ip"] == lost["ran_on"][1]["node_ip"] == "127.0.0.1"
    assert lost["ran_on"][0]["node_id"] != lost["ran_on"][1]["node_id"]
    assert lost["ran_on"][0]["node_session"].startswith(str(temp / "worker")) and lost["ran_on"][1]["node_session"].startswith(str(temp / "head"))
    assert len(lost["resumed_at"]) == 1 and lost["resumed_at"][0] >= killed_at, lost
    other = next(r for n, r in by.items() if n != name)
    assert [n["node_name"] for n in other["ran_on"]] == ["head"] and other["attempts"] == 1, other

    local = parse_grid({"population": "pair", "recipe": "digits", "overrides": overrides, "axes": {"seed": [0, 1]}}, "g",
                       out=tmp_path / "local")
    run_grid(local, backend="local", workers=1, threads=1)  # the same thread count as --cpus-per-run 1
    for n in by:
        ray_weights, local_weights = load_file(str(out / n / "model.safetensors")), load_file(str(tmp_path / "local" / n / "model.safetensors"))
        assert ray_weights.keys() == local_weights.keys()
        assert all(np.array_equal(ray_weights[k], local_weights[k]) for k in ray_weights), n


# --- stopping: SIGTERM is an orderly stop, Ray's own handler does not replace the caller's ---------------------------
def test_connect_ray_keeps_the_callers_signal_handlers(monkeypatch):
    """Ray's init installs a SIGTERM handler that dumps a native stack and exits wherever the caller is: put back."""
    import types

    from hubcompare.training.backends import connect_ray

    def ours(signum, frame):
        raise KeyboardInterrupt

    fake = types.SimpleNamespace(is_initialized=lambda: False,
                                 init=lambda **kw: signal.signal(signal.SIGTERM, lambda s, f: None))
    monkeypatch.setitem(sys.modules, "ray", fake)
    before = signal.signal(signal.SIGTERM, ours)
    try:
        ray, owns = connect_ray(None)
        assert ray is fake and owns and signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.slow  # starts a hubcompare process and trains until its first epoch
def test_sigterm_stops_a_grid_in_order(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("recipe: digits\noverrides: {train.epochs: 400}\naxes: {seed: [0]}\nout: pop\n")
    cli = [str(Path(sys.executable).with_name("hubcompare")), "grid", str(grid), "--workers", "1", "--threads", "1"]
    proc = subprocess.Popen(cli, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "pop" / "logs" / "digits-d14-w1-f1-s0.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.is_file() and "epoch 2/400" in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SIGTERM received" not in err and "Interrupted." in err
    manifest = json.loads((tmp_path / "pop" / "grid.json").read_text())
    (run,) = manifest["runs"]
    assert run["status"] == "pending" and run["epoch"] >= 2 and (tmp_path / "pop" / run["name"] / ".resume").is_dir()
