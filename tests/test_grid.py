"""Training grids (``hubcompare grid``): the grid file, and real runs on both backends with real faults.

A 4-run digits grid (ResNet-8, 10 epochs, seconds per run) runs on local worker processes and on a
real local Ray (``ray.init(num_cpus=2)``): one run's worker is killed with SIGKILL mid-run (it is
retried and resumes, losing only its current epoch), one run fails every attempt (its folder is taken
by a file) and is reported without stopping the others; a rerun skips what finished. The same seed
gives the same weights, bit for bit, whichever backend ran it (and whether or not it was killed).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from pathlib import Path

import pytest

from hubcompare.errors import GridBackendError, GridSpecError
from hubcompare.training.grid import run_grid
from hubcompare.training.gridspec import load_grid, parse_grid

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
    again = run_grid(spec, max_retries=0, **kw)
    assert {r.name: r.status for r in again.runs} == {n: "failed" if n == failing else "skipped" for n in NAMES}
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
    ({"recipe": "digits", "axes": {"seed": list(range(101)), "train.lr": [0.01 * i for i in range(1, 101)]}}, "more than 10,000"),
])
def test_bad_grid_files_are_refused(raw, expect):
    with pytest.raises(GridSpecError, match=expect):
        parse_grid(raw, "g")


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
    assert "finished checkpoint of another recipe" in by[NAMES[0]].errors[0] and "overwrite=True" in by[NAMES[0]].errors[0]
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
