"""Jobs as Ray tasks (``hubcompare serve --backend ray``): the job table of :class:`.jobs.JobQueue`, its jobs run on
a Ray cluster (or a local Ray started here) instead of the server's own worker processes.

Each job is one Ray task (``num_cpus`` = the server's threads per job; Ray's retries off: a job that failed once
is reported, not silently rerun). The task runs the same :func:`.jobs.run_job` a local worker runs; its progress
events travel as JSON text to a small Ray actor (the board) that the server's loop thread drains every
``POLL_S``, and its outcome (done or failed, JSON text too) is the task's return value. A task that raises, or
whose process dies, fails only its own job. Ray is imported only when this backend is chosen, through
:func:`hubcompare.training.backends.connect_ray` (the grid's Ray helpers: a wrong address fails in seconds).
"""

from __future__ import annotations

import json
import threading
from multiprocessing.connection import wait
from typing import Callable

from ..errors import ServiceBackendError
from ..training.backends import check_ray_address, connect_ray, ray_node_cpus
from .jobs import JobQueue, Runner, run_job
from .journal import JobJournal

__all__ = ["RayJobQueue", "check_ray"]

POLL_S = 0.2  # how often the loop collects progress and finished tasks


def check_ray(address: str | None) -> None:
    """Before the server starts: Ray is installed and (when given) something answers at ``address``."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ServiceBackendError("--backend ray needs Ray, which is not installed: pip install 'hubcompare[ray]', "
                                  "or use --backend local", params=("backend",)) from None
    check_ray_address(address, ServiceBackendError)


class _Board:
    """A Ray actor: the progress events of running tasks (JSON text), until the server takes them."""

    def __init__(self) -> None:
        self._events: list[str] = []

    def report(self, text: str) -> None:
        self._events.append(text)

    def take(self) -> list[str]:
        out, self._events = self._events, []
        return out


def _ray_task(job_id: str, request: dict, settings: dict, runner: Runner, board) -> str:
    """One job on a Ray worker: progress to the board as it goes, the outcome event (JSON text) returned."""
    outcome: list[str] = []

    def send(event: dict) -> None:
        text = json.dumps(event, allow_nan=False, default=str)
        if event["event"] == "progress":
            board.report.remote(text)
        else:
            outcome.append(text)

    send({"id": job_id, "event": "progress", "stage": "starting", "done": 0, "total": None})
    run_job(job_id, request, settings, runner, send)
    return outcome[-1]


class RayJobQueue(JobQueue):
    """The job table of :class:`JobQueue`; each job a Ray task asking ``cpus_per_job`` CPUs. Every queued job is
    handed to Ray at once (Ray schedules them by their CPUs); it shows as running from its task's first report."""

    def __init__(self, settings: dict, runner: Runner, *, address: str | None = None, cpus_per_job: int = 1,
                 max_pending: int = 100, journal: JobJournal | None = None, check: Callable[[dict], object] | None = None):
        super().__init__(settings, runner, workers=0, max_pending=max_pending, journal=journal, check=check)
        self.address, self.cpus_per_job = address, cpus_per_job
        self._ray = None
        self._owns = False
        self._refs: dict = {}  # ObjectRef -> job id

    def start(self) -> "RayJobQueue":
        self._restore()  # before Ray: a journal that cannot be read leaves no Ray behind
        ray, self._owns = connect_ray(self.address, ServiceBackendError)  # keeps the server's signal handlers
        self._ray = ray
        largest = max(ray_node_cpus(ray))
        if self.cpus_per_job > largest:
            self.stop()
            raise ServiceBackendError(f"each job asks for {self.cpus_per_job} CPUs (--threads) but the largest Ray node has "
                                      f"{largest:g}: lower --threads", params=("threads",))
        self._board = ray.remote(_Board).options(num_cpus=0).remote()
        self._remote = ray.remote(_ray_task).options(num_cpus=self.cpus_per_job, max_retries=0, retry_exceptions=False)
        self._thread = threading.Thread(target=self._loop, name="hubcompare-ray-jobs", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._close_journal()
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        ray = self._ray
        if ray is not None and ray.is_initialized():
            for ref in list(self._refs):
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
            if self._owns:
                ray.shutdown()
        self._refs = {}
        self._fail_unfinished()

    def worker_pids(self) -> list[int]:
        return []

    # --- the loop thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        ray = self._ray
        while not self._stopping:
            self._dispatch()
            if not self._refs:
                if wait([self._wake_r], timeout=1.0):
                    while self._wake_r.poll():
                        self._wake_r.recv_bytes()
                continue
            try:
                ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=POLL_S)
                for text in ray.get(self._board.take.remote(), timeout=30):
                    self._apply(json.loads(text))
            except Exception:  # noqa: BLE001 - Ray going away (shutdown); the next round or stop() settles it
                if self._stopping:
                    return
                continue
            for ref in ready:
                job_id = self._refs.pop(ref)
                try:
                    event = json.loads(ray.get(ref))
                except ray.exceptions.RayError as e:  # the task's process died, or Ray could not run it
                    first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
                    event = {"id": job_id, "event": "failed", "error_type": "WorkerCrashed",
                             "error": f"the Ray task running this job failed ({type(e).__name__}: {first[:300]}); the server "
                                      "carries on"}
                self._apply(event)

    def _dispatch(self) -> None:
        with self._lock:
            while self._queue:
                job = self._jobs[self._queue.popleft()]
                ref = self._remote.remote(job.id, job.request, self.settings, self.runner, self._board)
                self._refs[ref] = job.id
                job.stage = "queued on Ray"
