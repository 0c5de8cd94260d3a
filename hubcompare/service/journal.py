"""The job journal: the service's job table in SQLite beside the result store (``ROOT/jobs.sqlite``), so a
restarted server still knows its jobs.

Why: a comparison can be queued for minutes behind others; a server restarted (an upgrade, a crash, a killed
terminal) should neither forget it nor break the ``/jobs/ID`` link its user holds. Finished jobs come back as
they ended; queued and running ones are queued again (their stored results, if any, make the rerun instant).

Rows are whole job records as JSON, written when a job is queued, started and finished (never per progress
event), under the queue's lock; one connection, WAL, a busy timeout. The file is the server's own: a corrupt or
unreadable one is a typed error naming it, and a row that does not read back is skipped, not trusted.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import HubcompareError, JournalWriteError, ServiceConfigError
from ..results.store import check_key

__all__ = ["JOURNAL_FILE", "JobJournal", "record_types_ok"]

JOURNAL_FILE = "jobs.sqlite"
BUSY_TIMEOUT_S = 2  # another process holding the file: a write gives up soon (the jobs go on in memory)


class JobJournal:
    """Job records by id, in the order they were first saved."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, record TEXT NOT NULL)")
        except (OSError, sqlite3.Error) as e:
            raise ServiceConfigError(f"the job journal {self.path} cannot be opened ({e}): remove it to start with no "
                                     "remembered jobs, or make its folder writable") from e

    def save(self, record: dict) -> None:
        """Insert or replace one job's record (``record["id"]`` is its key; the first save fixes its order)."""
        text = json.dumps(record, allow_nan=False, sort_keys=True, default=str)
        with self._lock, self._writing():
            self._db.execute("INSERT INTO jobs (id, seq, record) VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?) "
                             "ON CONFLICT(id) DO UPDATE SET record = excluded.record", (record["id"], text))

    def load(self) -> list[dict]:
        """Every record that reads back as a JSON object with an id, oldest first."""
        with self._lock:
            try:
                rows = self._db.execute("SELECT id, record FROM jobs ORDER BY seq").fetchall()
            except sqlite3.Error as e:
                raise ServiceConfigError(f"the job journal {self.path} cannot be read ({e}): remove it to start with no "
                                         "remembered jobs") from e
        out = []
        for job_id, text in rows:
            try:
                record = json.loads(text)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("id") == job_id:
                out.append(record)
        return out

    def forget(self, ids: list[str]) -> None:
        if ids:
            with self._lock, self._writing():
                self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A write that fails (disk full, the file removed or locked) is a typed error naming the journal."""
        try:
            yield
        except sqlite3.Error as e:
            raise JournalWriteError(f"the job journal {self.path} cannot be written ({e})") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()


_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_RECORD_TEXT = 10_000  # a stage, an error, a notice: longer is not something this server wrote


def _count(v, optional: bool = False) -> bool:
    return (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53)


def _text(v, optional: bool = False) -> bool:
    return (optional and v is None) or (isinstance(v, str) and len(v) <= MAX_RECORD_TEXT)


def record_types_ok(job: dict, states: tuple[str, ...]) -> bool:
    """Whether a job record read back has every field of the type the job table writes: an id a short token, a
    state one of ``states``, counts whole numbers, texts strings (bounded), a result key a key (never a path), and
    an outcome that says what it is (a done job names its result, a failed one its error)."""
    get = job.get
    if not (isinstance(get("id"), str) and _JOB_ID.fullmatch(get("id")) and get("state") in states
            and isinstance(get("request"), dict)):
        return False
    if not all(_text(get(k)) for k in ("stage", "created")) or not all(_text(get(k), True) for k in (
            "started", "finished", "error", "error_type")):
        return False
    if not (_count(get("done")) and _count(get("total"), True) and isinstance(get("from_store"), bool)):
        return False
    if not all(isinstance(get(k), list) and all(_text(i) for i in get(k)) for k in ("notices", "warnings")):
        return False
    if get("result_key") is not None:
        try:
            check_key(get("result_key"))
        except HubcompareError:
            return False
    return not (get("state") == "done" and get("result_key") is None) and not (get("state") == "failed" and get("error") is None)
