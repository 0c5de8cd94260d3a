"""The result store: every comparison's files in ``ROOT/<key>/``, indexed in ``ROOT/index.sqlite``.

``ROOT`` defaults to ``$HUBCOMPARE_HOME/results`` (``~/.cache/hubcompare/results``). How it stays consistent
with many processes writing at once, and with processes killed at any moment:

- a computation writes into a fresh folder under ``ROOT/.staging/`` (named by its pid), invisible to readers;
  a block that raises, or ends without :meth:`ResultStore.put` taking the folder, removes it, and folders of
  dead pids (a killed process) are removed when a store is opened;
- :meth:`ResultStore.put` takes SQLite's write lock (``BEGIN IMMEDIATE``), renames the staging folder to
  ``ROOT/<key>`` and inserts the row, then commits: writers of one key are serialised, the first wins and the
  others get its entry back (their staging discarded); a row always has its folder;
- each result folder holds its own record (``.record.json``: everything its row says, written before the rename),
  so the index can be lost: opening a store indexes every folder whose record is whole and whose key is the key of
  its inputs (a process killed between the rename and the commit leaves exactly such a folder). A read never
  deletes a result folder; a folder without a readable record (one from before records) is left as it is,
  unlisted, and only a put of that very key replaces it. Only staging folders are ever swept;
- a result's ``source`` is its origin: ``computed`` (here) or ``hf-hub-result:OWNER/NAME@SHA`` (pulled), kept in
  its row and its record; a row or record without one was computed here;
- WAL journal and a busy timeout: readers never block writers, writers wait for each other.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ..errors import (
    AmbiguousResultKeyError,
    HubcompareError,
    InvalidResultKeyError,
    ResultFileError,
    ResultNotFoundError,
    ResultStoreError,
    short_repr,
)
from ..provenance import _alive, atomic_write_json, strict_json
from .keys import result_key

__all__ = ["StoredResult", "ResultStore", "default_results_dir", "check_key", "check_key_prefix", "MIN_PREFIX", "INDEX_FILE",
           "STAGING_DIR", "RECORD_FILE", "COMPUTED"]

INDEX_FILE = "index.sqlite"
STAGING_DIR = ".staging"
RECORD_FILE = ".record.json"  # in each result folder: its row, so the index can be rebuilt from the folders
COMPUTED = "computed"  # the source of a result computed in this store (else the hf-hub-result: reference it came from)
MIN_PREFIX = 6  # hex characters a key prefix needs (16.7 million values: collisions among stored results are rare)
BUSY_TIMEOUT_S = 60
_KEY = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]+")
_STAGING_NAME = re.compile(r"(?P<pid>[0-9]+)-[0-9a-f]{8}(?:\.trash)?")
COLUMNS = ("key", "kind", "created", "seconds", "title", "request", "key_inputs", "summary", "models", "dataset", "files",
           "source")
_JSON_COLUMNS = ("request", "key_inputs", "summary", "models", "files")
_RECORD_TYPES = {"key": str, "kind": str, "created": str, "seconds": (int, float), "title": str, "request": dict,
                 "key_inputs": dict, "summary": dict, "models": list, "dataset": str, "files": list, "source": str}


def default_results_dir() -> Path:
    """``$HUBCOMPARE_HOME/results`` (default ``~/.cache/hubcompare/results``, as the registry's folder)."""
    home = os.environ.get("HUBCOMPARE_HOME")
    base = Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hubcompare"
    return base / "results"


@dataclass
class StoredResult:
    """One stored comparison: what was asked, what its key hashes, its headline numbers and its files."""

    key: str
    kind: str
    created: str  # ISO 8601 UTC, when it was computed
    seconds: float  # compute time
    title: str
    request: dict
    key_inputs: dict
    summary: dict
    models: list[str]
    dataset: str
    files: list[str] = field(default_factory=list)
    source: str = COMPUTED  # its origin: computed here, or "hf-hub-result:OWNER/NAME@SHA" (pulled)
    path: Path = Path()

    @property
    def pulled(self) -> bool:
        """Whether it was computed elsewhere and pulled in (its numbers are the publisher's, not checked here)."""
        return self.source != COMPUTED

    @property
    def origin(self) -> str:
        """Where it came from, in words: ``computed here`` or ``pulled from hf-hub-result:OWNER/NAME@SHA``."""
        return f"pulled from {self.source}" if self.pulled else "computed here"

    def file(self, name: str) -> Path:
        """The path of one of the result's files; a name that is not one of ``files`` (or holds a path) is refused,
        so a name from a request never reaches the file system unchecked."""
        if not isinstance(name, str) or "/" in name or "\\" in name or "\0" in name or name in ("", ".", ".."):
            raise ResultFileError(f"{short_repr(name)} is not a file name: ask for one of {', '.join(self.files) or 'none'}")
        if name not in self.files:
            raise ResultFileError(f"result {self.key[:12]} has no file {name!r}: its files are {', '.join(self.files) or 'none'}")
        return self.path / name

    def to_json(self) -> dict:
        return {"key": self.key, "kind": self.kind, "created": self.created, "seconds": self.seconds, "title": self.title,
                "request": self.request, "key_inputs": self.key_inputs, "summary": self.summary, "models": self.models,
                "dataset": self.dataset, "files": self.files, "source": self.source, "path": str(self.path)}


def check_file_name(name: str) -> bool:
    """Whether ``name`` can be one of a result's files: a plain name in its folder (not its record)."""
    return bool(name) and not any(c in name for c in "/\\\0") and name not in (".", "..", RECORD_FILE)


def check_key(key: str) -> str:
    """A full result key (64 lowercase hex), or InvalidResultKeyError."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidResultKeyError(f"{short_repr(key)} is not a result key: a key is 64 hex characters "
                                    "(as result_key returns)")
    return key


def check_key_prefix(key_or_prefix: str) -> str:
    """A key or key prefix as :meth:`ResultStore.resolve` takes it (6 to 64 hex characters, any case), lowercased."""
    text = key_or_prefix.strip().lower() if isinstance(key_or_prefix, str) else key_or_prefix
    if not isinstance(text, str) or not _PREFIX.fullmatch(text) or len(text) > 64:
        raise InvalidResultKeyError(f"{short_repr(key_or_prefix)} is not a result key: give the key (64 hex "
                                    f"characters) or its first {MIN_PREFIX} or more, as `hubcompare results list` shows")
    if len(text) < MIN_PREFIX:
        raise InvalidResultKeyError(f"{text!r} is too short to name a result: give at least {MIN_PREFIX} hex characters "
                                    "of its key")
    return text


class ResultStore:
    """The store at ``root`` (default :func:`default_results_dir`); cheap to open, safe to share between processes."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_results_dir()
        self.index = self.root / INDEX_FILE
        self.staging_root = self.root / STAGING_DIR
        try:
            self.staging_root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._unusable(e) from None
        try:  # outside a transaction: SQLite refuses to change the journal mode inside one
            con = sqlite3.connect(self.index, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                con.execute("PRAGMA journal_mode=WAL")
            finally:
                con.close()
        except (sqlite3.Error, OSError) as e:
            raise self._unusable(e) from None
        self._sweep_staging()
        self._index_folders()

    # --- SQLite ----------------------------------------------------------------------------------
    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One connection, one transaction (``BEGIN IMMEDIATE`` when ``write``: the write lock is held from the start,
        so a check-then-insert cannot race); SQLite and file-system failures become ResultStoreError."""
        try:
            con = sqlite3.connect(self.index, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (sqlite3.Error, OSError) as e:
            raise self._unusable(e) from None
        try:
            con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
            con.execute(
                "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, kind TEXT NOT NULL, created TEXT NOT NULL, "
                "seconds REAL NOT NULL, title TEXT NOT NULL, request TEXT NOT NULL, key_inputs TEXT NOT NULL, "
                "summary TEXT NOT NULL, models TEXT NOT NULL, dataset TEXT NOT NULL, files TEXT NOT NULL, source TEXT NOT NULL)")
            con.execute("CREATE TABLE IF NOT EXISTS result_models (key TEXT NOT NULL, model TEXT NOT NULL, "
                        "PRIMARY KEY (key, model))")
            con.execute("CREATE INDEX IF NOT EXISTS result_models_model ON result_models (model)")
            con.execute("CREATE INDEX IF NOT EXISTS results_created ON results (created)")
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        except (sqlite3.Error, OSError) as e:
            raise self._unusable(e) from None
        finally:
            con.close()

    def _unusable(self, e: Exception) -> ResultStoreError:
        detail = f"{type(e).__name__}: {e}"
        if "locked" in str(e) or "busy" in str(e):
            return ResultStoreError(f"the result index {self.index} stayed locked by another process for "
                                    f"{BUSY_TIMEOUT_S} s ({detail}): retry when it has finished")
        if isinstance(e, OSError) or "unable to open" in str(e) or "readonly" in str(e):
            return ResultStoreError(f"cannot use the result store {self.root} ({detail}): make it a writable folder, "
                                    "or set HUBCOMPARE_HOME to one")
        return ResultStoreError(f"the result index {self.index} is not a readable result index ({detail}): move it "
                                f"aside (mv {self.index} {self.index}.bad); the next command rebuilds it from the result "
                                "folders, each of which holds its record")

    def _row(self, row: tuple) -> StoredResult:
        d = dict(zip(COLUMNS, row))
        try:
            for c in _JSON_COLUMNS:
                d[c] = json.loads(d[c])
        except ValueError as e:
            raise self._unusable(e) from None
        return StoredResult(**d, path=self.root / d["key"])

    # --- staging ---------------------------------------------------------------------------------
    def _new_private_dir(self, suffix: str = "") -> Path:
        return self.staging_root / f"{os.getpid()}-{secrets.token_hex(4)}{suffix}"

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh empty folder to write a result's files into, then hand to :meth:`put` inside the block. It is
        removed when the block raises, or ends without put() having taken it."""
        self.staging_root.mkdir(parents=True, exist_ok=True)
        folder = self._new_private_dir()
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _sweep_staging(self) -> None:
        """Remove the staging (and half-removed) folders of processes that are gone (killed mid-computation)."""
        try:
            entries = list(os.scandir(self.staging_root))
        except OSError:
            return
        for entry in entries:
            match = _STAGING_NAME.fullmatch(entry.name)
            if match and not _alive(int(match["pid"])):
                shutil.rmtree(entry.path, ignore_errors=True)

    def _index_folders(self) -> None:
        """Index the ``ROOT/<key>`` folders without a row from their records (a lost or replaced index, or a writer
        killed between its rename and its commit), and give indexed folders without a record one (folders stored
        before records). Nothing is deleted: a folder without a readable record stays as it is, unlisted."""
        folders = self._key_folders()
        if not folders:
            return
        with self._connect() as con:
            known = {k for (k,) in con.execute("SELECT key FROM results")}
            lacking = [k for k in folders & known if not (self.root / k / RECORD_FILE).is_file()]
            rows = [con.execute(f"SELECT {', '.join(COLUMNS)} FROM results WHERE key = ?", (k,)).fetchone()
                    for k in lacking]
        for row in filter(None, rows):
            self._write_record(self.root / row[0], dict(zip(COLUMNS, row)))
        found = [r for r in map(self._read_record, sorted(folders - known)) if r is not None]
        if not found:
            return
        with self._connect(write=True) as con:  # a live writer holds this lock across its rename and commit
            known = {k for (k,) in con.execute("SELECT key FROM results")}
            for values in found:
                if values[0] not in known and (self.root / values[0]).is_dir():
                    self._insert(con, values)

    def _write_record(self, folder: Path, row: dict) -> None:
        record = {c: json.loads(row[c]) if c in _JSON_COLUMNS and isinstance(row[c], str) else row[c] for c in COLUMNS}
        try:
            atomic_write_json(folder / RECORD_FILE, record)
        except OSError:
            pass  # a read-only folder keeps working from the index

    def _read_record(self, key: str) -> list | None:
        """The row values of ``ROOT/<key>``'s record, or None when it has none, it does not parse, its key is not the
        key of its inputs, or a file it lists is missing."""
        folder = self.root / key
        try:
            record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        record.setdefault("source", COMPUTED)
        try:
            ok = all(isinstance(record.get(c), t) and not isinstance(record.get(c), bool) for c, t in _RECORD_TYPES.items())
            ok = ok and record["key"] == key and result_key(record["kind"], record["key_inputs"]) == key
            ok = ok and all(isinstance(f, str) and check_file_name(f) and (folder / f).is_file() for f in record["files"])
        except (HubcompareError, ValueError):
            return None
        if not ok:
            return None
        return [json.dumps(strict_json(record[c]), allow_nan=False) if c in _JSON_COLUMNS else record[c] for c in COLUMNS]

    def _insert(self, con: sqlite3.Connection, values: list) -> None:
        con.execute(f"INSERT INTO results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values)
        con.executemany("INSERT OR IGNORE INTO result_models (key, model) VALUES (?, ?)",
                        [(values[0], str(m)) for m in json.loads(values[COLUMNS.index("models")])])

    def _key_folders(self) -> set[str]:
        try:
            return {e.name for e in os.scandir(self.root) if _KEY.fullmatch(e.name) and e.is_dir(follow_symlinks=False)}
        except OSError:
            return set()

    def _discard(self, folder: Path) -> None:
        """Remove a folder: renamed into staging first (one atomic step out of sight), then deleted."""
        trash = self._new_private_dir(".trash")
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # --- writes ----------------------------------------------------------------------------------
    def put(self, key: str, kind: str, *, title: str, request: dict, key_inputs: dict, summary: dict, models: list[str],
            dataset: str, staging: Path, seconds: float, source: str = "computed", created: str | None = None) -> StoredResult:
        """Move ``staging``'s files to ``ROOT/<key>`` and index them, in one transaction. When the key is stored
        already (another process got there first) the stored entry is returned and ``staging`` is discarded."""
        check_key(key)
        if key != result_key(kind, key_inputs):
            raise ResultStoreError(f"key {key[:12]} is not result_key({kind!r}, key_inputs) "
                                   f"({result_key(kind, key_inputs)[:12]}): store a result under the key of its inputs")
        staging = Path(staging)
        if staging.parent.resolve() != self.staging_root.resolve() or not staging.is_dir():
            raise ResultStoreError(f"{staging} is not a staging folder of {self.root}: write the files into a folder "
                                   "this store's staging gave, and store it inside that block")
        files = self._staged_files(staging)
        row = {"key": key, "kind": kind, "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "seconds": float(seconds), "title": str(title), "request": request, "key_inputs": key_inputs,
               "summary": summary, "models": [str(m) for m in models], "dataset": str(dataset or ""), "files": files,
               "source": str(source or COMPUTED)}
        values = [json.dumps(strict_json(row[c]), allow_nan=False) if c in _JSON_COLUMNS else row[c] for c in COLUMNS]
        atomic_write_json(staging / RECORD_FILE, row)  # the folder's own record: what rebuilds a lost index
        folder = self.root / key
        with self._connect(write=True) as con:
            existing = con.execute(f"SELECT {', '.join(COLUMNS)} FROM results WHERE key = ?", (key,)).fetchone()
            if existing is not None and folder.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
                return self._row(existing)
            if existing is not None:  # its folder vanished: this result replaces it
                con.execute("DELETE FROM results WHERE key = ?", (key,))
                con.execute("DELETE FROM result_models WHERE key = ?", (key,))
            elif (found := self._read_record(key)) is not None:  # a whole result whose row was lost: the first wins
                self._insert(con, found)
                shutil.rmtree(staging, ignore_errors=True)
                return self._row(found)
            self._discard(folder)  # a folder of this key without a readable record: this result replaces it
            os.rename(staging, folder)
            try:
                self._insert(con, values)
            except BaseException:
                self._discard(folder)
                raise
        return self._row(values)

    def _staged_files(self, staging: Path) -> list[str]:
        files = []
        for entry in os.scandir(staging):
            if entry.name == RECORD_FILE:
                continue  # put() writes it
            if not entry.is_file(follow_symlinks=False):
                raise ResultStoreError(f"{entry.path} is not a regular file: a stored result holds plain files only "
                                       "(no folders or links)")
            files.append(entry.name)
        return sorted(files)

    def remove(self, key: str) -> StoredResult:
        """Delete a result: its row, then its folder (both under the write lock, so a concurrent put is not hit)."""
        check_key(key)
        with self._connect(write=True) as con:
            row = con.execute(f"SELECT {', '.join(COLUMNS)} FROM results WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise ResultNotFoundError(f"no stored result {key[:12]}: see `hubcompare results list`")
            con.execute("DELETE FROM results WHERE key = ?", (key,))
            con.execute("DELETE FROM result_models WHERE key = ?", (key,))
            self._discard(self.root / key)
        return self._row(row)

    # --- reads -----------------------------------------------------------------------------------
    def get(self, key: str) -> StoredResult | None:
        """The result stored under ``key``, or None (a row whose folder was deleted by hand is dropped)."""
        check_key(key)
        with self._connect() as con:
            row = con.execute(f"SELECT {', '.join(COLUMNS)} FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        stored = self._row(row)
        if not stored.path.is_dir():
            self._drop([key])
            return None
        return stored

    def _drop(self, keys: list[str]) -> None:
        """Forget rows whose folder is gone (re-checked under the lock: a put may have just restored one)."""
        with self._connect(write=True) as con:
            for key in keys:
                if not (self.root / key).is_dir():
                    con.execute("DELETE FROM results WHERE key = ?", (key,))
                    con.execute("DELETE FROM result_models WHERE key = ?", (key,))

    def resolve(self, key_or_prefix: str) -> StoredResult:
        """The one result whose key is, or starts with, ``key_or_prefix`` (at least 6 hex characters)."""
        text = check_key_prefix(key_or_prefix)
        with self._connect() as con:  # hex only: no LIKE wildcards in it
            rows = con.execute(f"SELECT {', '.join(COLUMNS)} FROM results WHERE key LIKE ? ORDER BY key LIMIT 11",
                               (text + "%",)).fetchall()
        found = [s for s in map(self._row, rows) if s.path.is_dir()]
        if len(found) < len(rows):
            self._drop([s.key for s in map(self._row, rows) if not s.path.is_dir()])
        if not found:
            raise ResultNotFoundError(f"no stored result has a key starting {text!r}: see `hubcompare results list`")
        if len(found) > 1:
            shown = "; ".join(f"{s.key[:16]} ({s.title})" for s in found[:10])
            raise AmbiguousResultKeyError(f"{text!r} starts {'more than 10' if len(found) > 10 else len(found)} results: "
                                          f"{shown}. Give more of the key", [s.key for s in found])
        return found[0]

    def list(self, *, kind: str | None = None, model: str | None = None, limit: int | None = None) -> list[StoredResult]:
        """Stored results, newest first; ``model``: those comparing it (``hf-hub:O/N`` also matches ``hf-hub:O/N@SHA``)."""
        where, args = [], []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if model is not None:
            where.append("key IN (SELECT key FROM result_models WHERE model = ? OR substr(model, 1, ?) = ?)")
            args += [model, len(model) + 1, model + "@"]
        sql = f"SELECT {', '.join(COLUMNS)} FROM results"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        sql += " ORDER BY created DESC, rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(max(0, int(limit)))
        with self._connect() as con:
            found = [self._row(r) for r in con.execute(sql, args).fetchall()]
        gone = [s.key for s in found if not s.path.is_dir()]
        if gone:
            self._drop(gone)
        return [s for s in found if s.key not in gone]
