"""The job queue: comparisons requested over HTTP run in a pool of worker processes, never in the server.

Why processes: a comparison holds the CPU (and torch's memory) for seconds to minutes; in the server process it
would stall every page. Each worker is a ``spawn``ed process that runs one job at a time and talks to the server
over its own pipe, in JSON only (``send_bytes``; nothing is unpickled from a job). One thread of the server
(``_loop``) owns the pipes: it hands queued jobs to idle workers, applies progress and outcomes to the job table,
and notices a worker that died (its sentinel): that worker's job is marked failed with a readable message and a
fresh worker takes its slot, so one crashing job never stops the server or the other jobs.

An identical request (same canonical JSON) that is already queued or running returns the same job. A request whose
result is already stored completes at once in its worker (``run_request`` finds it in the store).
With a :class:`.journal.JobJournal` (what ``hubcompare serve`` uses) the job table outlives the server: a restarted
one shows its finished jobs as they ended and queues the unfinished ones again.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import secrets
import signal
import threading
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection, wait
from typing import Callable

from ..errors import HubcompareError, JobNotFoundError, JournalWriteError, ServiceBusyError, ServiceRequestError
from .journal import JobJournal, record_types_ok
from .redact import scrub_paths

__all__ = ["Job", "JobQueue", "Runner", "STATES", "run_job"]

STATES = ("queued", "running", "done", "failed")
KEEP_FINISHED = 1000  # finished jobs remembered (oldest forgotten first)
MAX_IDLE_DEATHS = 3  # workers that die with no job this many times in a row: the pool gives up (a broken install)
PROGRESS_INTERVAL_S = 0.1
STOP_TIMEOUT_S = 0.3  # per step of stopping the workers (ask, terminate, kill)

# A runner: (request JSON, settings, on_progress(stage, done, total)) -> {"result_key": ..., "from_store": ..., ...}.
# It runs in a worker process, so it must be a module-level function (spawn imports it by name).
Runner = Callable[[dict, dict, Callable[[str, int, "int | None"], None]], dict]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def request_fingerprint(request: dict) -> str:
    """What makes two requests the same job: their canonical JSON."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Job:
    """One requested comparison and where it stands. ``error``: a readable message (the typed error's) on failure."""

    id: str
    request: dict
    fingerprint: str
    state: str = "queued"
    stage: str = "queued"
    done: int = 0
    total: int | None = None
    result_key: str | None = None
    from_store: bool = False
    error: str | None = None
    error_type: str | None = None
    notices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    created: str = field(default_factory=_now)
    started: str | None = None
    finished: str | None = None

    @property
    def finished_state(self) -> bool:
        return self.state in ("done", "failed")

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("fingerprint")
        return d


def run_job(job_id: str, request: dict, settings: dict, runner: Runner, send: Callable[[dict], None]) -> None:
    """Run one job with ``runner``, reporting through ``send`` (JSON-able dicts): throttled progress events, then
    ``done`` or ``failed`` (a typed error's message; any other exception as a one-line bug report). Never raises:
    one failing job never takes its worker (or Ray task's process) down. Shared by the local pool and Ray."""
    last = {"stage": None, "at": 0.0}

    def on_progress(stage: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if stage != last["stage"] or now - last["at"] >= PROGRESS_INTERVAL_S or (total is not None and done >= total):
            last.update(stage=stage, at=now)
            send({"id": job_id, "event": "progress", "stage": str(stage), "done": int(done),
                  "total": None if total is None else int(total)})

    try:
        outcome = runner(request, settings, on_progress)
        send({"id": job_id, "event": "done", "result_key": outcome["result_key"], "from_store": bool(outcome.get("from_store")),
              "notices": [str(n) for n in outcome.get("notices", [])], "warnings": [str(w) for w in outcome.get("warnings", [])]})
    except HubcompareError as e:
        send({"id": job_id, "event": "failed", "error": str(e), "error_type": type(e).__name__})
    except Exception as e:  # a bug: the job fails, the worker (and the server) carry on
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}" if where else ""
        send({"id": job_id, "event": "failed", "error": f"unexpected {type(e).__name__}{at}: {e} (a bug in hubcompare: please "
              "report it)", "error_type": type(e).__name__})


class _ServerGone(BaseException):
    """The server closed this worker's pipe (it is stopping) or died: the worker ends, quietly. A BaseException, so
    the job's own ``except Exception`` does not take it for the job's failure."""


def _worker_main(conn: Connection, settings: dict, runner: Runner) -> None:
    """A worker process: run each job it is sent, report progress and the outcome as JSON on ``conn``.
    Ctrl-C in the server's terminal reaches the workers too: they ignore it and stop when the server tells them.
    Stopping is quiet: a server that closes the pipe mid-job, or dies (``kill -9``), ends its workers without a
    traceback (a running job is left unfinished in the journal, and the next server runs it again)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with(mp.parent_process())

    def send(event: dict) -> None:
        try:
            conn.send_bytes(json.dumps(event, allow_nan=False, default=str).encode())
        except (OSError, ValueError):  # a broken or closed pipe: the server is stopping or gone
            raise _ServerGone() from None

    while True:
        try:
            message = json.loads(conn.recv_bytes())
        except (EOFError, OSError, ValueError):
            return
        if message.get("op") != "run":
            return
        try:
            run_job(message["id"], message["request"], settings, runner, send)
        except _ServerGone:
            return


def _exit_with(parent) -> None:
    """A daemon thread that ends this worker as soon as its server process is gone (killed with -9, it cannot stop
    its workers itself): an orphan must not go on computing a job nobody will collect, nor print into a terminal."""
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="hubcompare-worker-watch", daemon=True).start()


class _Worker:
    def __init__(self, ctx, settings: dict, runner: Runner):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, settings, runner), daemon=True, name="hubcompare-job-worker")
        self.process.start()
        child.close()
        self.job_id: str | None = None


class JobQueue:
    """Queued comparison jobs and the worker processes that run them. ``start()`` before use, ``stop()`` after."""

    def __init__(self, settings: dict, runner: Runner, *, workers: int = 1, max_pending: int = 100,
                 journal: JobJournal | None = None, check: Callable[[dict], object] | None = None):
        self.settings, self.runner, self.workers, self.max_pending = settings, runner, workers, max_pending
        self.journal = journal
        self.check = check  # the server's request check, run again on a restored unfinished job (its limits may be lower now)
        self._journal_open = journal is not None
        self.journal_problem: str | None = None  # why the journal stopped taking writes, if it did
        self._ctx = mp.get_context("spawn")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._active: dict[str, str] = {}  # fingerprint -> id of the queued or running job
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._pool: list[_Worker] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._idle_deaths = 0
        self.broken: str | None = None  # why the pool gave up, if it did
        self.restarts = 0

    # --- the server's side ---------------------------------------------------------------------------------
    def start(self) -> "JobQueue":
        self._restore()
        self._pool = [_Worker(self._ctx, self.settings, self.runner) for _ in range(self.workers)]
        self._thread = threading.Thread(target=self._loop, name="hubcompare-jobs", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the loop and the workers, fast (a SIGTERM to an idle server ends it well within a second): each
        worker is told to stop and its pipe closed (an idle worker returns at once), and whatever has not exited
        within ``timeout`` (a running job, a worker still importing torch) is terminated, then killed."""
        self._close_journal()
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop_workers(timeout)
        self._fail_unfinished()

    def _stop_workers(self, timeout: float) -> None:
        for w in self._pool:
            try:
                w.conn.send_bytes(b'{"op": "stop"}')
            except OSError:
                pass
            w.conn.close()
        for how in ("ask", "terminate", "kill"):
            alive = [w.process for w in self._pool if w.process.is_alive()]
            if how == "terminate":
                for process in alive:
                    process.terminate()
            elif how == "kill":
                for process in alive:
                    process.kill()
            deadline = time.monotonic() + timeout
            while alive and time.monotonic() < deadline:
                wait([p.sentinel for p in alive], timeout=max(0.0, deadline - time.monotonic()))
                alive = [p for p in alive if p.is_alive()]
            if not alive:
                break
        for w in self._pool:
            w.process.join(0)

    def _fail_unfinished(self) -> None:
        """Jobs still queued or running when the server stops: failed here; with a journal they stay unfinished
        there, and the next start queues them again."""
        with self._lock:
            for job in self._jobs.values():
                if not job.finished_state:
                    self._finish(job, error="the server stopped before this job finished: request it again", error_type="ServerStopped")
        if self.journal is not None:
            self.journal.close()

    def submit(self, request: dict) -> tuple[Job, bool]:
        """Queue ``request`` (validated JSON); returns the job and whether it is new (False: the same request was
        already queued or running, and that job is returned)."""
        fingerprint = request_fingerprint(request)
        with self._lock:
            if self.broken:
                raise ServiceRequestError(f"the job workers cannot start ({self.broken}): fix the installation and restart the server")
            same = self._active.get(fingerprint)
            if same is not None:
                return self._jobs[same], False
            if len(self._active) >= self.max_pending:
                raise ServiceBusyError(f"{len(self._active)} jobs are queued or running, the most this server takes: "
                                       "retry when some have finished")
            job = Job(id=secrets.token_hex(8), request=request, fingerprint=fingerprint)
            self._jobs[job.id] = job
            self._active[fingerprint] = job.id
            self._queue.append(job.id)
            self._save(job)
            self._forget_old()
        self._wake()
        return job, True

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFoundError(f"no job {job_id!r} on this server (it keeps the last {KEEP_FINISHED} finished "
                                       "jobs; stored results are kept apart: see /results)")
            return Job(**{k: getattr(job, k) for k in job.__dataclass_fields__})  # a copy: the loop keeps writing

    def jobs(self) -> list[Job]:
        with self._lock:
            return [self.get_unlocked(j) for j in reversed(self._jobs)]

    def get_unlocked(self, job_id: str) -> Job:
        job = self._jobs[job_id]
        return Job(**{k: getattr(job, k) for k in job.__dataclass_fields__})

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = dict.fromkeys(STATES, 0)
            for job in self._jobs.values():
                out[job.state] += 1
            return out

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._pool if w.process.pid is not None]

    # --- the loop thread -----------------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"1")
        except OSError:
            pass

    def _loop(self) -> None:
        while not self._stopping:
            self._dispatch()
            waitables = [self._wake_r] + [w.conn for w in self._pool] + [w.process.sentinel for w in self._pool]
            for ready in wait(waitables, timeout=1.0):
                if ready is self._wake_r:
                    while self._wake_r.poll():
                        self._wake_r.recv_bytes()
                    continue
                for w in list(self._pool):
                    if ready is w.conn:
                        self._drain(w)
                    elif ready == w.process.sentinel:
                        self._drain(w)
                        self._replace(w)

    def _dispatch(self) -> None:
        with self._lock:
            for w in self._pool:
                if w.job_id is not None or not self._queue or not w.process.is_alive():
                    continue
                job = self._jobs[self._queue.popleft()]
                try:
                    w.conn.send_bytes(json.dumps({"op": "run", "id": job.id, "request": job.request}).encode())
                except OSError:  # the worker is going away: its sentinel brings it back, the job waits
                    self._queue.appendleft(job.id)
                    continue
                w.job_id, job.state, job.stage, job.started = job.id, "running", "starting", _now()
                self._save(job)

    def _drain(self, w: _Worker) -> None:
        while True:
            try:
                if not w.conn.poll():
                    return
                event = json.loads(w.conn.recv_bytes())
            except (EOFError, OSError, ValueError):
                return
            if self._apply(event):
                w.job_id = None

    def _apply(self, event: dict) -> bool:
        """Apply a worker's event (progress, done, failed) to its job; True when the job finished with it."""
        with self._lock:
            job = self._jobs.get(event.get("id"))
            if job is None or job.finished_state:
                return False
            kind = event.get("event")
            if kind == "progress":
                if job.state != "running":  # a Ray task's first report: it has started
                    job.state, job.started = "running", job.started or _now()
                job.stage, job.done, job.total = event["stage"], event["done"], event["total"]
                return False
            if kind == "done":
                job.result_key, job.from_store = event["result_key"], event["from_store"]
                job.notices, job.warnings = [*job.notices, *event["notices"]], event["warnings"]  # kept: "queued again"
                self._finish(job)
            elif kind == "failed":  # the message is shown to web clients: no path of the server's
                self._finish(job, error=scrub_paths(str(event["error"])), error_type=event.get("error_type"))
            else:
                return False
            self._idle_deaths = 0
            return True

    def _finish(self, job: Job, error: str | None = None, error_type: str | None = None) -> None:
        job.state, job.finished = ("failed" if error else "done"), _now()
        job.stage = "failed" if error else "done"
        job.error, job.error_type = error, error_type
        if self._active.get(job.fingerprint) == job.id:
            del self._active[job.fingerprint]
        self._save(job)

    def _replace(self, w: _Worker) -> None:
        w.process.join(5.0)  # the sentinel fired: reap it, so its exit code is known
        code = w.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        with self._lock:
            if w.job_id is not None:
                job = self._jobs.get(w.job_id)
                if job is not None and not job.finished_state:
                    self._finish(job, error=f"the worker process running this job stopped ({how}), e.g. out of memory; "
                                            "a new worker took its place and the server carries on", error_type="WorkerCrashed")
                self._idle_deaths = 0
            else:
                self._idle_deaths += 1
            w.conn.close()
            self._pool.remove(w)
            self.restarts += 1
            if self._idle_deaths >= MAX_IDLE_DEATHS:
                self.broken = f"{self._idle_deaths} workers in a row stopped at start ({how})"
                for job_id in self._queue:
                    self._finish(self._jobs[job_id], error=f"no worker could start ({self.broken})", error_type="WorkerCrashed")
                self._queue.clear()
                return
        if not self._stopping:
            self._pool.append(_Worker(self._ctx, self.settings, self.runner))

    def _forget_old(self) -> None:
        finished = [j for j, job in self._jobs.items() if job.finished_state]
        old = finished[: max(0, len(finished) - KEEP_FINISHED)]
        for job_id in old:
            del self._jobs[job_id]
        if self._journal_open:
            try:
                self.journal.forget(old)
            except JournalWriteError as e:
                self._journal_open, self.journal_problem = False, f"{e}; jobs are kept in memory only until a restart"

    # --- the journal (the caller holds the lock) --------------------------------------------------------------
    def _save(self, job: Job) -> None:
        if self._journal_open:
            try:
                self.journal.save(asdict(job))
            except JournalWriteError as e:  # the jobs go on, in memory only: a full disk must not stop the loop
                self._journal_open, self.journal_problem = False, f"{e}; jobs are kept in memory only until a restart"

    def _close_journal(self) -> None:
        """First thing when stopping: what the stop does to running jobs (killed workers, cancelled tasks) is not
        their outcome, so nothing more is written and the next start finds them unfinished."""
        with self._lock:
            self._journal_open = False

    def _restore(self) -> None:
        """Take the journal's jobs back: finished ones as they ended, the others queued again in their order
        (unless the server's check refuses them now)."""
        if self._stopping:
            raise RuntimeError("a stopped JobQueue does not start again: make a new one")
        if self.journal is None:
            return
        with self._lock:
            self._journal_open = True
            for record in self.journal.load():
                job = _job_from_record(record)
                if job is None or job.id in self._jobs:
                    continue
                self._jobs[job.id] = job
                if not job.finished_state:
                    if job.fingerprint in self._active:  # the same request twice (never written so; be safe)
                        self._finish(job, error="the same request is queued as another job", error_type="Duplicate")
                        continue
                    try:
                        if self.check is not None:
                            self.check(job.request)
                    except HubcompareError as e:
                        self._finish(job, error=f"not run again after the server restarted: {e}", error_type=type(e).__name__)
                        continue
                    job.state, job.stage, job.done, job.total, job.started = "queued", "queued", 0, None, None
                    job.notices = [*job.notices, "queued again: the server restarted before this job finished"]
                    self._active[job.fingerprint] = job.id
                    self._queue.append(job.id)
                    self._save(job)
            self._forget_old()


def _job_from_record(record: dict) -> Job | None:
    """A job from its journal record, or None when the record is not one (a row is read back, never trusted): every
    field is type-checked, as the job table writes it (a result key is a key, an id a short token, counts whole
    numbers), so an edited or stale row can neither point a page at another path nor break one."""
    fields = Job.__dataclass_fields__
    try:
        job = Job(**{k: v for k, v in record.items() if k in fields and k != "fingerprint"}, fingerprint="")
    except TypeError:
        return None
    if not record_types_ok(asdict(job), STATES):
        return None
    job.fingerprint = request_fingerprint(job.request)  # derived, never read: a stale row must not join other requests
    return job
