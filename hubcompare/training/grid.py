"""Running a training grid: one run per point of a :class:`~hubcompare.training.gridspec.GridSpec`. No printing.

The population folder holds one checkpoint folder per run, ``logs/NAME.log`` (one log per run,
appended by every attempt) and ``grid.json`` (the points and how each run ended). With a fit rule
(``until_fit``) a run that ends below the rule's train accuracy is trained again from scratch with the
next epoch count; the under-fit checkpoint is kept in ``underfit/NAME-eEPOCHS/`` (:mod:`.runstate`).

:func:`run_grid` is idempotent and survives faults: a run whose folder holds a finished checkpoint of
the same recipe hash (which covers seed, dataset and data fraction) is skipped; an interrupted one
resumes from its resume state; a failing one is retried up to ``max_retries`` times and then reported
without stopping the others; a worker killed mid-run costs only that run's current epoch (it is
retried, resuming). Runs execute on a backend (:mod:`.backends`): local worker processes or Ray.
Progress is reported through ``on_event`` (:class:`GridEvent`, with counts and an ETA).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..errors import GridBackendError
from ..provenance import atomic_write_json
from ..models.threads import ThreadPolicy
from .backends import LocalPool, RayPool, RunTask, machine_cpus
from .gridspec import FitRule, GridPoint, GridSpec
from .runstate import RunState, finished_block, inspect_run, set_aside

__all__ = ["GridEvent", "GridStatus", "RunRecord", "GridResult", "run_grid", "BACKENDS", "MANIFEST"]

BACKENDS = ("local", "ray")
MANIFEST = "grid.json"
LOCK_FILE = ".grid.lock"
POLL_S = 0.2


# --- running ----------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """One run of the grid and how it stands: status is pending | running | done | skipped | failed."""

    name: str
    values: dict[str, Any]
    recipe_hash: str
    run_dir: Path
    log_file: Path
    epochs: int  # the epochs of the rung it trains (when finished: the epochs it finally got)
    status: str = "pending"
    attempts: int = 0
    rung: int = 0  # with a fit rule: 0 (the recipe's epochs), 1 (the rule's first epoch count), ...
    epoch: int = 0  # last epoch known finished (saved in the resume state)
    session_epochs: int = 0  # epochs trained by this invocation (for the ETA)
    pid: int | None = None
    test_accuracy: float | None = None
    train_accuracy: float | None = None  # the last epoch's (what the fit rule reads)
    wall_time_s: float | None = None
    resumed_at: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rungs: list[dict] = field(default_factory=list)  # each rung trained: rung, epochs, train/test accuracy, kept (folder)
    # each attempt: attempt, grid_session, host, pid (Ray: node_*); earlier invocations' entries are carried over
    ran_on: list[dict] = field(default_factory=list)
    grid_session: str = ""  # this invocation's id, in each ran_on entry it adds
    rung_attempts: int = 0  # attempts before this rung began (retries are counted per rung)

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()
                if k not in ("pid", "session_epochs", "rung_attempts", "grid_session")}


@dataclass(frozen=True)
class GridStatus:
    total: int
    done: int  # trained to the end by this invocation
    skipped: int  # already finished before
    running: int
    pending: int  # waiting for a worker (retries included)
    failed: int
    elapsed_s: float
    eta_s: float | None  # None until an epoch has been timed


@dataclass(frozen=True)
class GridEvent:
    """kind: plan | skip | start | epoch | evaluate | done | refit | retry | failed | finish (``run`` None for plan/finish).

    ``refit``: a finished rung did not fit (``accuracy`` is its train accuracy); it was kept aside and the run
    trains again for ``epochs``."""

    kind: str
    status: GridStatus
    run: str | None = None
    attempt: int = 0
    epoch: int = 0
    epochs: int = 0
    pid: int | None = None
    accuracy: float | None = None
    error: str | None = None


@dataclass
class GridResult:
    population: str
    out: Path
    backend: str
    runs: list[RunRecord]
    wall_time_s: float
    manifest: Path

    @property
    def finished(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status in ("done", "skipped")]

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "failed"]


@contextmanager
def _locked(out: Path):
    """Hold ``out/.grid.lock`` (one grid per population folder at a time)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    with open(out / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise GridBackendError(f"another grid is running in {out} (it holds {out / LOCK_FILE}): wait for it, or choose "
                                   "another population folder.", params=("out",)) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_choices(backend: str, workers, threads, max_retries: int, cpus_per_run, gpus_per_run) -> None:
    if backend not in BACKENDS:
        raise GridBackendError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}", params=("backend",))
    for name, value, low in (("workers", workers, 1), ("threads", threads, 1), ("max_retries", max_retries, 0)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise GridBackendError(f"{name} = {value!r} must be an integer >= {low}", params=(name,))
    for name, value in (("cpus_per_run", cpus_per_run), ("gpus_per_run", gpus_per_run)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise GridBackendError(f"{name} = {value!r} must be a number >= 0", params=(name,))


def run_grid(
    spec: GridSpec,
    *,
    backend: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    ray_address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float = 0.0,
    max_retries: int = 1,
    data_dir: str | Path | None = None,
    overwrite: bool = False,
    device: str | None = None,
    train_kwargs: dict[str, Any] | None = None,
    on_event: Callable[[GridEvent], None] | None = None,
) -> GridResult:
    """Train every run of ``spec`` that is not finished yet; returns every run's record (nothing is raised for failed runs).

    ``backend="local"``: ``workers`` processes (default: one per CPU, at most one per run), each run with
    ``threads`` torch threads (default: the CPUs split between min(runs in the grid, CPUs) workers).
    ``backend="ray"``: Ray tasks of ``cpus_per_run`` CPUs (default ``threads``, else the cluster's CPUs split the
    same way, at most one node's) and ``gpus_per_run`` GPUs, on the cluster at ``ray_address`` or a local Ray;
    a run's thread count is ``threads``, else its CPUs (1 for a small model, whatever the load:
    :class:`~hubcompare.models.threads.ThreadPolicy` with ``by_load=False``). The same seed and thread count give the same weights
    on either backend (each checkpoint records its ``torch_threads``). ``overwrite``: start over runs whose
    folder holds another recipe's checkpoint or resume state (finished runs of the same recipe are still
    skipped). ``device``
    (``auto``, ``cpu``, ``cuda``, ...; default: ``train``'s) is resolved by each worker: on Ray a run asking for
    GPUs sees only its own. ``train_kwargs`` go to :func:`~hubcompare.training.loop.train` as they are.
    """
    _check_choices(backend, workers, threads, max_retries, cpus_per_run, gpus_per_run)
    train_kwargs = {**(train_kwargs or {}), **({"device": device} if device is not None else {})}
    out = spec.out.expanduser().resolve()
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GridBackendError(f"cannot create the population folder {out} ({e.strerror or e}): choose a folder you can write to.",
                               params=("out",)) from None
    emit = on_event or (lambda e: None)
    started = time.perf_counter()
    records = {p.name: RunRecord(p.name, p.values, p.recipe.hash, out / p.name, out / "logs" / f"{p.name}.log",
                                 p.recipe["train"]["epochs"]) for p in spec.points}
    rule = spec.until_fit
    points = {p.name: p for p in spec.points}
    session = uuid.uuid4().hex[:8]
    for r, before in _earlier_attempts(out / MANIFEST, records):
        r.ran_on = before
    for r in records.values():
        r.grid_session = session

    def status() -> GridStatus:
        count = {s: sum(r.status == s for r in records.values()) for s in ("done", "skipped", "running", "pending", "failed")}
        left = sum(r.epochs - r.epoch for r in records.values() if r.status in ("running", "pending"))
        trained = sum(r.session_epochs for r in records.values())
        elapsed = time.perf_counter() - started
        return GridStatus(len(records), **count, elapsed_s=elapsed, eta_s=left * elapsed / trained if trained else None)

    def event(kind: str, r: RunRecord | None = None, **kw) -> None:
        if r is not None:
            kw = {"attempt": r.attempts, "epoch": r.epoch, "epochs": r.epochs, "pid": r.pid, **kw}
        emit(GridEvent(kind, status(), r.name if r else None, **kw))

    with _locked(out):
        todo: deque[str] = deque()
        refits: list[tuple[RunRecord, dict]] = []
        for r in records.values():
            st = _settle(r, points[r.name], rule, out, lambda r, kept: refits.append((r, kept)))
            if st.state == "finished":
                _mark_skipped(r, st)
            elif st.state == "stale" and not overwrite:
                r.status, r.errors = "failed", [st.why]
            else:
                todo.append(r.name)
        event("plan")
        for r, kept in refits:
            event("refit", r, accuracy=kept["train_accuracy"])
        for r in records.values():
            if r.status in ("skipped", "failed"):
                event("skip" if r.status == "skipped" else "failed", r, accuracy=r.test_accuracy, error=(r.errors or [None])[-1])
        cores = machine_cpus()
        pool = None
        try:
            if todo:
                # threads per run follow from the whole grid (not from what is left), so a rerun trains with the
                # same thread count as the first run: on CPU the thread count can change the last bits of the weights
                if backend == "local":
                    per_run = threads or max(1, cores // (workers or min(len(records), cores)))
                    pool = LocalPool(workers or max(1, min(len(todo), cores // per_run)))
                else:
                    pool = RayPool(ray_address, cpus_per_run if cpus_per_run is not None else threads, gpus_per_run, len(records))
                    per_run = threads or max(1, int(pool.cpus_per_run))
                # no --threads: at most that share, 1 for a small model (hubcompare.models.threads), never by the
                # load of the moment (a rerun must get the same count)
                run_kwargs = {"threads": threads or ThreadPolicy(at_most=per_run, by_load=False), **train_kwargs}
            inflight: set[str] = set()

            def fail(r: RunRecord, error: str) -> None:
                inflight.discard(r.name)
                r.errors.append(error)
                r.pid = None
                if r.attempts - r.rung_attempts <= max_retries:
                    r.status = "pending"
                    todo.append(r.name)
                    event("retry", r, error=error)
                else:
                    r.status = "failed"
                    event("failed", r, error=error)

            while todo or inflight:
                while todo and len(inflight) < pool.slots:
                    r = records[todo.popleft()]
                    # again: an earlier attempt may have got further, or finished a rung that does not fit
                    st = _settle(r, points[r.name], rule, out, lambda r, kept: event("refit", r, accuracy=kept["train_accuracy"]))
                    state = st.state
                    if state == "finished":
                        _mark_skipped(r, st, done=True)
                        event("done", r, accuracy=r.test_accuracy)
                        continue
                    r.attempts += 1
                    pool.submit(RunTask(r.name, points[r.name].ladder[r.rung], r.run_dir, r.log_file,
                                        out / "logs" / f"{r.name}.progress.json", r.attempts, f"{session}-{r.attempts}", per_run,
                                        Path(data_dir).expanduser().resolve() if data_dir else None,
                                        overwrite and state == "stale", dict(run_kwargs)))
                    inflight.add(r.name)
                for kind, name, payload in pool.poll(POLL_S):
                    r = records[name]
                    if name not in inflight:
                        continue
                    if kind == "progress":
                        _progress(r, payload, event)
                    elif kind == "result" and payload.get("ok"):
                        inflight.discard(name)
                        _note_node(r, payload.get("node"))
                        r.pid, r.epoch = None, r.epochs
                        r.test_accuracy, r.wall_time_s = payload["test_accuracy"], payload["wall_time_s"]
                        r.train_accuracy, r.resumed_at = payload.get("train_accuracy"), payload.get("resumed_at", [])
                        if rule is not None and r.rung < len(points[name].ladder) - 1 and not rule.fits(r.train_accuracy):
                            r.status = "pending"  # the next rung: the submit loop above sets this one aside
                            todo.appendleft(name)
                        else:
                            r.status = "done"
                            r.rungs = [*r.rungs, {"rung": r.rung, "epochs": r.epochs, "recipe_hash": points[name].ladder[r.rung].hash,
                                                  "train_accuracy": r.train_accuracy, "test_accuracy": r.test_accuracy, "kept": None}]
                            event("done", r, accuracy=r.test_accuracy)
                        _write_manifest(spec, GridResult(spec.population, out, backend, list(records.values()),
                                                         time.perf_counter() - started, out / MANIFEST))  # as each run ends
                    else:
                        fail(r, payload["error"] if kind == "result" else payload)
                    if kind != "progress":
                        (out / "logs" / f"{name}.progress.json").unlink(missing_ok=True)
                        if kind == "crash":
                            _log(r.log_file, f"attempt {r.attempts} lost: {payload}")
        finally:
            if pool is not None:
                pool.close()
            for r in records.values():
                if r.status == "running":  # interrupted: its resume state holds the last finished epoch
                    r.status = "pending"
            result = GridResult(spec.population, out, backend, list(records.values()), time.perf_counter() - started,
                                out / MANIFEST)
            _write_manifest(spec, result)
    event("finish")
    return result


def _progress(r: RunRecord, state: dict, event) -> None:
    """Fold a worker's cumulative progress into the record; emit start (first news of an attempt), epoch, evaluate."""
    first = r.status != "running"
    r.status, r.pid = "running", state.get("pid")
    if first:
        _note_node(r, state.get("node"))
        event("start", r)
    kind, epoch, resumed = state.get("kind"), int(state.get("epoch") or 0), int(state.get("resumed_from") or 0)
    if kind != "begin" and resumed > r.epoch:  # where training picked up: trained before, not now
        r.epoch = resumed
    if kind in ("epoch", "evaluate") and epoch > r.epoch:
        r.session_epochs += epoch - r.epoch
        r.epoch = epoch
        event("epoch", r)
    if kind == "evaluate":
        event("evaluate", r)


def _settle(r: RunRecord, point: GridPoint, rule: FitRule | None, out: Path, on_refit) -> RunState:
    """Where ``r`` stands (its folder read again); a finished rung that does not fit is set aside first, so the
    state returned is what to do next: finished, resume or new (at ``r.rung``), or stale."""
    while True:
        st = inspect_run(point, r.run_dir, rule, out)
        if st.state != "underfit":
            break
        kept = set_aside(point, r.run_dir, out, st)
        nxt = point.ladder[st.rung + 1]["train"]["epochs"]
        acc = kept["train_accuracy"]
        acc = f"{acc:.4f}" if isinstance(acc, (int, float)) else "(unknown)"
        _log(r.log_file, f"{kept['epochs']} epochs ended at train accuracy {acc}, below the fit rule's "
                         f"{rule.train_accuracy:g}: kept in {kept['kept']}; training again from scratch for {nxt} epochs")
        r.rung, r.epochs, r.epoch, r.rung_attempts = st.rung + 1, nxt, 0, r.attempts
        on_refit(r, kept)
    r.rung, r.epochs, r.rungs = st.rung, point.ladder[st.rung]["train"]["epochs"], list(st.kept)
    return st


def _note_node(r: RunRecord, node: dict | None) -> None:
    """Where this attempt runs (once per attempt of this invocation)."""
    if node and not any(n.get("attempt") == r.attempts and n.get("grid_session") == r.grid_session for n in r.ran_on):
        r.ran_on.append({"attempt": r.attempts, "grid_session": r.grid_session, **node})


def _earlier_attempts(manifest: Path, records: dict[str, RunRecord]):
    """(record, where its earlier attempts ran) from the population's previous grid.json, for runs of the same recipe:
    a rerun that finds a run finished keeps the record of the node that trained it."""
    try:
        runs = json.loads(manifest.read_text(encoding="utf-8")).get("runs")
    except (OSError, ValueError, AttributeError):
        return
    for old in runs if isinstance(runs, list) else []:
        r = records.get(old.get("name")) if isinstance(old, dict) else None
        if r is not None and old.get("recipe_hash") == r.recipe_hash and isinstance(old.get("ran_on"), list):
            yield r, [n for n in old["ran_on"] if isinstance(n, dict)]


def _mark_skipped(r: RunRecord, st: RunState, done: bool = False) -> None:
    block = st.block or {}
    r.status = "done" if done else "skipped"
    r.epochs = block.get("epochs") or r.epochs
    r.epoch = r.epochs
    r.test_accuracy, r.train_accuracy = block.get("test_accuracy"), block.get("train_accuracy")
    r.wall_time_s = block.get("wall_time_s")
    r.resumed_at = list(block.get("resumed_at_epochs") or [])
    r.rungs = [*st.kept, {"rung": st.rung, "epochs": r.epochs, "recipe_hash": block.get("recipe_hash"),
                          "train_accuracy": r.train_accuracy, "test_accuracy": r.test_accuracy, "kept": None}]


def _log(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {line}\n")


def _write_manifest(spec: GridSpec, result: GridResult) -> None:
    atomic_write_json(result.manifest, {
        "population": spec.population, "source": spec.source, "description": spec.description, "recipe": spec.recipe,
        "overrides": spec.overrides, "axes": spec.axes, "exclude": list(spec.exclude),
        "until_fit": spec.until_fit.to_dict() if spec.until_fit else None, "backend": result.backend, "pid": os.getpid(),
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_time_s": round(result.wall_time_s, 2),
        "runs": [r.to_dict() for r in result.runs],
    })
