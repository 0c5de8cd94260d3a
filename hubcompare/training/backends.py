"""Where the runs of a grid execute: a pool of local worker processes, or Ray tasks. No printing.

Both backends run the same function, :func:`execute`, on a :class:`RunTask`: it sets the thread count,
appends to the run's log file, calls :func:`~hubcompare.training.loop.train` (which resumes from the
run's ``.resume`` state) and returns a plain dict; errors come back as text, never raised, so one run's
failure never reaches the others. Progress is reported as cumulative dicts (``kind``, ``epoch``,
``epochs``, ``resumed_from``, ``pid``, ``token``).

A backend is driven through three calls: ``submit(task)``, ``poll(timeout)`` (messages
``("progress", name, dict)``, ``("result", name, dict)`` or ``("crash", name, text)``) and ``close()``.

- :class:`LocalPool`: ``workers`` long-lived ``spawn`` processes (torch and ``fork`` do not mix), each
  fed one task at a time over its own pipe. A worker that dies (``kill -9``, out of memory) is noticed
  by its process sentinel; only the run it held is reported as crashed, the other workers keep going,
  and a fresh process replaces it. (``concurrent.futures.ProcessPoolExecutor`` would mark the whole
  pool broken and terminate every worker, losing every running run's current epoch.)
- :class:`RayPool`: one Ray task per run (``num_cpus``/``num_gpus`` per run, Ray's own retries off,
  since retries are counted by the grid). Progress travels through a small JSON file per run next to
  its log, so the population folder must be on a filesystem every Ray node sees (it holds the
  checkpoints anyway). Ray is imported only here, only when this backend is chosen.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BackendError, GridBackendError, HubcompareError
from ..provenance import atomic_write_json

if TYPE_CHECKING:  # the Ray helpers below are used before any model is loaded: no torch import here
    from .recipes import Recipe

__all__ = ["RunTask", "execute", "LocalPool", "RayPool", "check_ray_address", "connect_ray", "keep_loopback", "machine_cpus",
           "ray_node_cpus"]

Message = tuple[str, str, Any]


def machine_cpus() -> int:
    """CPUs this process may use (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RunTask:
    """One attempt at one run: everything a worker needs (picklable, paths absolute)."""

    name: str
    recipe: Recipe
    run_dir: Path
    log_file: Path
    progress_file: Path
    attempt: int
    token: str  # grid session + attempt: progress written by an earlier attempt is ignored
    threads: int
    data_dir: Path | None = None
    overwrite: bool = False
    train_kwargs: dict[str, Any] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def execute(task: RunTask, report: Callable[[dict], None], node: dict | None = None) -> dict:
    """Train one run (resuming it when it has resume state); its log goes to ``task.log_file``. ``node``: where
    it runs (default: this machine's host name and the process id), in every progress dict and the result."""
    # torch and the training loop load here, in the worker: the driver (and the Ray connection check the
    # comparison commands run first) never pays for them
    import torch

    from .loop import train

    torch.set_num_threads(max(1, task.threads))
    node = {"host": socket.gethostname(), "pid": os.getpid(), **(node or {})}
    state = {"kind": "begin", "epoch": 0, "epochs": task.recipe["train"]["epochs"], "resumed_from": 0, "pid": os.getpid(),
             "token": task.token, "host": node["host"], "node": node}
    task.log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(task.log_file, "a", encoding="utf-8", buffering=1) as log:
        log.write(f"{_now()} attempt {task.attempt}: {task.name} (recipe {task.recipe.hash}) -> {task.run_dir}; pid {state['pid']} "
                  f"on {_where(node)}, {task.threads} thread(s), device {task.train_kwargs.get('device', 'cpu')}"
                  f"{', overwrite' if task.overwrite else ''}\n")
        report(dict(state))

        def on_event(e) -> None:
            if e.kind in ("step", "evaluate_batch"):
                return
            state.update(kind=e.kind, epoch=e.epoch, epochs=e.epochs)
            if e.kind == "start":
                state["resumed_from"] = e.resumed_from
                log.write(f"{_now()} start: {e.num_train} training examples, {e.steps} steps per epoch"
                          + (f", {e.threads.describe()}" if e.threads is not None else "")
                          + (f", resuming after epoch {e.resumed_from}" if e.resumed_from else "") + "\n")
            elif e.kind == "epoch":
                log.write(f"{_now()} epoch {e.epoch}/{e.epochs} loss {e.loss:.4f} train acc {e.accuracy:.4f} lr {e.lr:.5g}\n")
            elif e.kind == "evaluate":
                log.write(f"{_now()} evaluating on the test split\n")
            report(dict(state))

        started = time.perf_counter()
        try:
            result = train(task.recipe, task.run_dir, data_dir=task.data_dir, on_event=on_event, overwrite=task.overwrite,
                           **task.train_kwargs)
        except Exception as e:  # reported as text: the driver retries or records it, the worker lives on
            log.write(f"{_now()} failed: {type(e).__name__}: {e}\n")
            if not isinstance(e, HubcompareError):  # a typed error's message is the whole story; anything else is a bug
                log.write(traceback.format_exc())
            return {"ok": False, "error": f"{type(e).__name__}: {e}", "node": node}
        log.write(f"{_now()} done: test accuracy {result.test_accuracy:.4f}, train accuracy {result.train_accuracy:.4f}, "
                  f"{result.wall_time_s:.1f} s of training over all attempts\n")
        return {"ok": True, "test_accuracy": result.test_accuracy, "train_accuracy": result.train_accuracy,
                "wall_time_s": result.wall_time_s, "attempt_s": round(time.perf_counter() - started, 3),
                "resumed_at": list(result.meta.resumed_at_epochs or []), "node": node}


def _where(node: dict) -> str:
    ray = f" (Ray node {node.get('node_name') or node.get('node_ip')}, {node['node_id'][:12]})" if node.get("node_id") else ""
    return f"{node['host']}{ray}"


# --- local worker processes -------------------------------------------------------------------
def _worker_main(conn) -> None:
    """A worker process: run tasks from the pipe until it closes. Ctrl-C is the driver's to handle; if the
    driver dies (even by kill -9) the worker exits at once, so no orphan keeps training a run a rerun takes up."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True, name="exit-with-driver").start()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        result = execute(task, lambda state, name=task.name: conn.send(("progress", name, state)))
        conn.send(("result", task.name, result))


class _Worker:
    def __init__(self, ctx):
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="hubcompare-grid-worker")
        self.process.start()
        child.close()
        self.task: RunTask | None = None


class LocalPool:
    """``workers`` spawn processes on this machine; a dead worker costs only the run it held."""

    def __init__(self, workers: int):

        self.slots = max(1, workers)
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []

    def submit(self, task: RunTask) -> None:
        for w in [w for w in self._workers if w.task is None and not w.process.is_alive()]:  # died while idle
            self._drop(w)
        idle = next((w for w in self._workers if w.task is None), None)
        if idle is None:
            if len(self._workers) >= self.slots:
                raise RuntimeError("LocalPool.submit: every worker is busy")  # the grid never over-submits
            idle = _Worker(self._ctx)
            self._workers.append(idle)
        idle.task = task
        try:
            idle.conn.send(task)
        except OSError:  # it died just now: poll() reports the task as crashed (it is retried)
            pass

    def _drop(self, w: _Worker) -> None:
        w.process.join(timeout=5)
        w.conn.close()
        self._workers.remove(w)

    def poll(self, timeout: float) -> list[Message]:

        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            time.sleep(timeout)
            return []
        wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout)
        out: list[Message] = []
        for w in busy:
            try:
                while w.conn.poll():
                    kind, name, payload = w.conn.recv()
                    out.append((kind, name, payload))
                    if kind == "result":
                        w.task = None
            except (EOFError, OSError):
                pass
            if w.task is not None and not w.process.is_alive():
                self._drop(w)
                code = w.process.exitcode
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                out.append(("crash", w.task.name, f"worker process {w.process.pid} died ({how})"))
        return out

    def close(self) -> None:
        for w in self._workers:  # idle ones hold nothing; busy ones (interrupted) have their last epoch in the resume state
            w.process.terminate()
        for w in self._workers:
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
        self._workers = []


# --- Ray --------------------------------------------------------------------------------------
def _ray_execute(task: RunTask) -> dict:
    """The Ray task: :func:`execute`, with progress written to the run's progress file."""
    return execute(task, lambda state: atomic_write_json(task.progress_file, state), _ray_node())


def _ray_node() -> dict:
    """The Ray node this task runs on: id, IP, name and session folder (two nodes on one machine differ in id and
    session folder, which lies under the node's --temp-dir)."""
    import ray  # in a Ray worker: Ray is there

    node_id = ray.get_runtime_context().get_node_id()
    info = next((n for n in ray.nodes() if n.get("NodeID") == node_id), {})
    socket_path = str(info.get("ObjectStoreSocketName") or "")
    return {"node_id": node_id, "node_ip": info.get("NodeManagerAddress"), "node_name": info.get("NodeName"),
            "node_session": str(Path(socket_path).parent.parent) if socket_path.startswith("/") else None}


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT (or ray://HOST:PORT) nothing answers at (ray.init would retry for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if sep and host and port.isdigit():
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass


def _unreachable(error: type[BackendError], address: str | None, e: BaseException) -> BackendError:
    why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return error(f"cannot start or reach Ray{f' at {address}' if address else ''} ({why}): check ray_address, "
                 "or leave it unset to start a local Ray.", params=("ray_address",))


def _is_loopback(host: str) -> bool:
    return host.strip("[]") in ("127.0.0.1", "::1", "localhost")


@contextmanager
def keep_loopback(ray):
    """Within this block Ray takes 127.0.0.1 (``--node-ip-address``, a cluster address) as given. Ray itself
    replaces a loopback address by this machine's network address (so that other machines could reach the
    node); for a cluster of nodes on one machine that is bound to 127.0.0.1 that is what must not happen."""
    services = ray._private.services
    original = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: host if host and _is_loopback(host) else original(host)
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original


def check_ray_address(address: str | None, error: type[BackendError] = GridBackendError) -> None:
    """Refuse, within seconds, a HOST:PORT Ray address nothing answers at (before any slower work is done)."""
    if address:
        try:
            _reachable(address)
        except (OSError, ValueError) as e:
            raise _unreachable(error, address, e) from None


@contextmanager
def keeping_signal_handlers():
    """Starting Ray installs its own SIGTERM handler (a native stack dump, then ``sys.exit`` wherever the caller is)
    over the caller's: put the caller's back, so SIGTERM and Ctrl-C stop a grid, a comparison or the service in
    their own order. Only the main thread may set handlers; elsewhere there is nothing to keep."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)


def connect_ray(address: str | None = None, error: type[BackendError] = GridBackendError):
    """Ray, ready for tasks: ``(ray, owns)``, owns being True when a local Ray was started here (the caller
    shuts it down). An already initialised Ray (``ray.init`` called by the caller) is used as it is; otherwise
    the cluster at ``address`` (checked first, so a wrong HOST:PORT fails in seconds, not after Ray's minutes
    of retries) or, without one, a local Ray on this machine's CPUs. Failures are ``error``s naming
    ``ray_address`` (or ``backend`` when Ray is not installed). Ray is imported here, only when called."""
    try:
        import ray
    except ImportError:
        raise error("the ray backend needs Ray, which is not installed: pip install 'hubcompare[ray]', or "
                    "use backend='local'.", params=("backend",)) from None
    check_ray_address(address, error)
    if ray.is_initialized():
        return ray, False
    try:
        with keeping_signal_handlers():
            if address:
                host = address.removeprefix("ray://").rpartition(":")[0]
                with keep_loopback(ray) if _is_loopback(host) else nullcontext():  # a cluster on this machine, at 127.0.0.1
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(num_cpus=machine_cpus(), include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
    except (OSError, RuntimeError, ValueError) as e:
        raise _unreachable(error, address, e) from None
    return ray, True


def ray_node_cpus(ray) -> list[float]:
    """The CPUs of each live node of the Ray cluster (``[1.0]`` when it reports none)."""
    return [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [1.0]


class RayPool:
    """One Ray task per run, on the cluster at ``address`` or a local Ray started (and stopped) here.

    An already initialised Ray (``ray.init`` called by the caller) is used as it is and left running.
    """

    def __init__(self, address: str | None = None, cpus_per_run: float | None = None, gpus_per_run: float = 0.0, runs: int = 1):
        self._refs: dict[Any, RunTask] = {}
        self._seen: dict[str, str] = {}
        ray, self._owns = connect_ray(address, GridBackendError)
        self._ray = ray
        node_cpus = ray_node_cpus(ray)
        if cpus_per_run is None:  # as the local pool splits a machine: the cluster's CPUs over min(runs, CPUs) runs
            total = int(sum(node_cpus))
            cpus_per_run = float(max(1, min(total // max(1, min(runs, total)), int(max(node_cpus)))))
        if cpus_per_run > max(node_cpus):
            self.close()
            raise GridBackendError(f"each run asks for {cpus_per_run:g} CPUs but the largest Ray node has {max(node_cpus):g}: "
                                   "lower cpus_per_run.", params=("cpus_per_run",))
        node_gpus = max(float(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")) if gpus_per_run else 0.0
        if gpus_per_run > node_gpus:
            self.close()
            raise GridBackendError(f"each run asks for {gpus_per_run:g} GPUs but the largest Ray node has {node_gpus:g}: "
                                   "lower gpus_per_run.", params=("gpus_per_run",))
        self.cpus_per_run = cpus_per_run
        self.slots = 1 << 30  # every run is submitted at once; Ray schedules them by their resources
        self._remote = ray.remote(_ray_execute).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0,
                                                         retry_exceptions=False)

    def submit(self, task: RunTask) -> None:
        task.progress_file.unlink(missing_ok=True)
        self._seen.pop(task.name, None)
        self._refs[self._remote.remote(task)] = task

    def poll(self, timeout: float) -> list[Message]:
        ray = self._ray
        out: list[Message] = []
        if not self._refs:
            time.sleep(timeout)
            return out
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        for task in self._refs.values():
            out.extend(self._progress(task))
        for ref in ready:
            task = self._refs.pop(ref)
            try:
                out.append(("result", task.name, ray.get(ref)))
            except ray.exceptions.RayError as e:  # the worker died (kill -9, node lost) or Ray could not run the task
                first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
                out.append(("crash", task.name, f"Ray task failed ({type(e).__name__}): {first[:300]}"))
        return out

    def _progress(self, task: RunTask) -> list[Message]:
        try:
            text = task.progress_file.read_text(encoding="utf-8")
            state = json.loads(text)
        except (OSError, ValueError):
            return []
        if state.get("token") != task.token or self._seen.get(task.name) == text:
            return []
        self._seen[task.name] = text
        return [("progress", task.name, state)]

    def close(self) -> None:
        for ref in list(self._refs):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # pragma: no cover - already finished or gone
                pass
        self._refs = {}
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
