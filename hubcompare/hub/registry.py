"""The registry: short names for models, with the card metadata needed to select populations.

Two sources, one view:
- the user's entries, in SQLite in the user cache directory (``$HUBCOMPARE_HOME/registry.sqlite``,
  default ``~/.cache/hubcompare/registry.sqlite``), written by ``registry add``/``sync``, ``push``;
- curated, shareable entries as plain text in the repository's ``registry/`` folder, one entry per
  line (``NAME REFERENCE key=value ...``), so a change is a one-line diff. They are read-only here.

A population is a query over the registry (``Registry.query(depth=62, width=1, dataset="cifar10")``
or ``population="zoo"``). Entries are only written after the pull or push they describe succeeded.
"""

from __future__ import annotations

import difflib
import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Callable, Iterable

from ..bundled import bundled_dir
from ..errors import InvalidReferenceError, RegistryConflictError, RegistryCorruptError, RegistryEntryNotFoundError, RegistryError
from ..models.metadata import ModelMeta
from .endpoint import hub_api, listed_reference, listed_repo_id, with_retries
from .names import ACCEPTED_FORMS, NAME, check_name, check_namespace, check_registry_name, parse_reference

__all__ = ["Entry", "Registry", "default_registry_path", "default_curated_dirs", "entry_from_meta", "sync"]

LINE_KEYS = {"architecture": str, "depth": int, "width": float, "dataset": str, "fraction": float, "seed": int,
             "accuracy": float, "populations": str, "commit": str}


def default_registry_path() -> Path:
    home = os.environ.get("HUBCOMPARE_HOME")
    base = Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hubcompare"
    return base / "registry.sqlite"


def default_curated_dirs() -> list[Path | Traversable]:
    """``$HUBCOMPARE_REGISTRY_DIRS`` (your own curated folders), then the bundled entries (the repository's
    ``registry/`` folder, shipped as package data)."""
    dirs: list[Path | Traversable] = [Path(p) for p in os.environ.get("HUBCOMPARE_REGISTRY_DIRS", "").split(os.pathsep) if p]
    return dirs + [bundled_dir("registry")]


@dataclass
class Entry:
    """One named model. ``reference`` is any non-registry reference (Hub ones pinned to a commit)."""

    name: str
    reference: str
    commit_sha: str | None = None
    architecture: str | None = None
    depth: int | None = None
    width: float | None = None
    dataset: str | None = None
    data_fraction: float | None = None
    seed: int | None = None
    accuracy: float | None = None
    populations: list[str] = field(default_factory=list)
    source: str = "user"  # "user" (SQLite) or the curated file it came from
    added_at: str | None = None

    def to_line(self) -> str:
        """The curated-file form: ``NAME REFERENCE key=value ...`` (only the known fields)."""
        parts = [self.name, self.reference]
        for key, value in (("architecture", self.architecture), ("depth", self.depth), ("width", self.width),
                           ("dataset", self.dataset), ("fraction", self.data_fraction), ("seed", self.seed),
                           ("accuracy", self.accuracy), ("populations", ",".join(self.populations) or None),
                           ("commit", self.commit_sha)):
            if value is not None:
                parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
        return " ".join(parts)


def _check_reference(ref: str) -> str:
    parsed = parse_reference(ref) if ref.partition(":")[0] in ("hf-hub", "timm", "local-dir") else None
    if parsed is None:
        raise RegistryError(f"registry references must be hf-hub:..., timm:... or local-dir:... (got {ref!r})")
    return str(parsed)


def parse_line(line: str, source: str) -> Entry | None:
    """One curated line -> Entry (None for blank lines and comments)."""
    line = line.split("#", 1)[0].strip()
    if not line:
        return None
    name, *rest = line.split()
    if not rest:
        raise RegistryCorruptError(f"{source}: {line!r} names no model: write NAME REFERENCE [key=value ...], "
                                   "e.g. zoo-a hf-hub:OWNER/NAME@COMMIT depth=14")
    ref, *pairs = rest
    values: dict = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or key not in LINE_KEYS:
            raise RegistryError(f"{source}: unknown field {pair!r} (known: {', '.join(LINE_KEYS)})")
        try:
            values[key] = LINE_KEYS[key](value)
        except ValueError:
            raise RegistryError(f"{source}: {key}={value!r} is not a {LINE_KEYS[key].__name__}") from None
    try:
        name, ref = check_registry_name(name), _check_reference(ref)
    except InvalidReferenceError as e:
        raise RegistryCorruptError(f"{source}: {e}") from None
    return Entry(
        name=name, reference=ref, commit_sha=values.get("commit"),
        architecture=values.get("architecture"), depth=values.get("depth"), width=values.get("width"),
        dataset=values.get("dataset"), data_fraction=values.get("fraction"), seed=values.get("seed"),
        accuracy=values.get("accuracy"), populations=[p for p in values.get("populations", "").split(",") if p],
        source=source,
    )


def _read_curated(f: Path | Traversable) -> str:
    try:
        return f.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RegistryCorruptError(f"{f} is not UTF-8 text (byte {e.start}: {e.reason}): save it as UTF-8, "
                                   "or remove it from HUBCOMPARE_REGISTRY_DIRS") from None
    except OSError as e:
        raise RegistryCorruptError(f"cannot read the curated registry file {f} ({e.strerror or e}): make it a readable "
                                   "file, or remove its folder from HUBCOMPARE_REGISTRY_DIRS") from None


COLUMNS = [f.name for f in fields(Entry) if f.name != "source"]


class Registry:
    """The merged view: user entries (SQLite) override curated ones of the same name."""

    def __init__(self, path: str | Path | None = None, curated_dirs: Iterable[str | Path] | None = None):
        self.path = Path(path) if path else default_registry_path()
        self.curated_dirs = [Path(d) if isinstance(d, str) else d
                             for d in (default_curated_dirs() if curated_dirs is None else curated_dirs)]

    @contextmanager
    def _connect(self):
        """A transaction on the user database; SQLite and file-system failures become a typed error (a
        RegistryCorruptError when the file is not a registry) that names the fix (the database is the user's own file: it is never moved or deleted here)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=30)
            try:
                with con:
                    con.execute(
                        "CREATE TABLE IF NOT EXISTS entries (name TEXT PRIMARY KEY, reference TEXT NOT NULL, "
                        "commit_sha TEXT, architecture TEXT, depth INTEGER, width REAL, dataset TEXT, data_fraction REAL, "
                        "seed INTEGER, accuracy REAL, populations TEXT NOT NULL DEFAULT '[]', added_at TEXT)"
                    )
                    yield con
            finally:
                con.close()
        except (sqlite3.Error, OSError) as e:
            raise self._unusable(e) from None

    def _unusable(self, e: Exception) -> RegistryError:
        """The typed error for a database that cannot be used: locked, not openable, or not a registry (corrupt)."""
        where, detail = self.path, f"{type(e).__name__}: {e}"
        if "locked" in str(e):
            return RegistryError(f"the registry database {where} is locked by another process ({detail}): "
                                 "retry when it has finished")
        if isinstance(e, OSError) or "unable to open" in str(e) or "readonly" in str(e):
            return RegistryError(f"cannot open the registry database {where} ({detail}): make {where.parent} a "
                                 "writable folder, or set HUBCOMPARE_HOME to one")
        return RegistryCorruptError(
            f"the registry database {where} is not a readable registry ({detail}): move it aside "
            f"(mv {where} {where}.bad) and re-create your entries with `hubcompare registry add` or `registry sync`, "
            "or set HUBCOMPARE_HOME to another folder")

    def curated(self) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        for d in self.curated_dirs:
            if not d.is_dir():
                continue
            for f in sorted((f for f in d.iterdir() if f.name.endswith(".txt")), key=lambda f: f.name):
                for n, line in enumerate(_read_curated(f).splitlines(), 1):
                    e = parse_line(line, f"{f}:{n}")
                    if e is None:
                        continue
                    if e.name in out and out[e.name].reference != e.reference:
                        raise RegistryConflictError(f"{e.source}: {e.name} is already defined at {out[e.name].source}")
                    out[e.name] = e
        return out

    def user(self) -> dict[str, Entry]:
        with self._connect() as con:
            rows = con.execute(f"SELECT {', '.join(COLUMNS)} FROM entries ORDER BY name").fetchall()
        out = {}
        for row in rows:
            d = dict(zip(COLUMNS, row))
            try:
                d["populations"] = json.loads(d["populations"] or "[]")
            except ValueError as e:
                raise self._unusable(e) from None
            out[d["name"]] = Entry(**d, source="user")
        return out

    def entries(self) -> dict[str, Entry]:
        return dict(sorted((self.curated() | self.user()).items()))

    def names(self) -> set[str]:
        return set(self.entries())

    def get(self, name: str) -> Entry:
        entries = self.entries()
        if name not in entries:
            known = ", ".join(sorted(entries)[:10]) or "none yet"
            close = difflib.get_close_matches(name, list(entries), n=1, cutoff=0.75)
            hint = f"did you mean {close[0]}? " if close else ""
            raise RegistryEntryNotFoundError(
                f"no registry entry {name!r}: {hint}(known: {known}{' ...' if len(entries) > 10 else ''}). "
                f"Add one with `hubcompare registry add {name} REFERENCE`.\n{ACCEPTED_FORMS}"
            )
        return entries[name]

    def add(self, entry: Entry, replace: bool = False) -> Entry:
        check_registry_name(entry.name)
        entry.reference = _check_reference(entry.reference)
        existing = self.entries().get(entry.name)
        if existing is not None and existing.reference != entry.reference and not replace:
            raise RegistryConflictError(
                f"{entry.name} already names {existing.reference} ({existing.source}); replace it explicitly (replace) or use another name",
                params=("replace",),
            )
        entry.added_at = entry.added_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
        row = asdict(entry)
        row["populations"] = json.dumps(sorted(set(entry.populations)))
        with self._connect() as con:
            con.execute(
                f"INSERT OR REPLACE INTO entries ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                [row[c] for c in COLUMNS],
            )
        entry.source = "user"
        return entry

    def remove(self, name: str) -> Entry:
        entry = self.get(name)
        if entry.source != "user":
            raise RegistryConflictError(f"{name} is a curated entry ({entry.source}): edit that file to remove it")
        with self._connect() as con:
            con.execute("DELETE FROM entries WHERE name = ?", (name,))
        return entry

    def query(self, *, population: str | None = None, architecture: str | None = None, depth: int | None = None,
              width: float | None = None, dataset: str | None = None, data_fraction: float | None = None,
              seed: int | None = None) -> list[Entry]:
        """Entries matching every given field: a population (e.g. all seeds of depth 62, width 1 on cifar10)."""
        out = []
        for e in self.entries().values():
            if population is not None and population not in e.populations:
                continue
            if any(want is not None and have != want for want, have in (
                    (architecture, e.architecture), (depth, e.depth), (dataset, e.dataset), (seed, e.seed))):
                continue
            if any(want is not None and (have is None or abs(have - want) > 1e-9) for want, have in (
                    (width, e.width), (data_fraction, e.data_fraction))):
                continue
            out.append(e)
        return out


def entry_from_meta(name: str, reference: str, meta: ModelMeta, commit_sha: str | None = None,
                    populations: Iterable[str] = ()) -> Entry:
    """An entry describing a model by its metadata (a checkpoint's, or a Hub card's ``hubcompare`` block)."""
    return Entry(
        name=name, reference=reference, commit_sha=commit_sha, architecture=meta.architecture, depth=meta.depth,
        width=meta.width, dataset=meta.dataset, data_fraction=meta.data_fraction, seed=meta.seed,
        accuracy=meta.test_accuracy, populations=sorted(set(meta.populations) | set(populations)),
    )


def sync(registry: Registry, author: str, population: str | None = None, api=None,
         on_retry: Callable[[int, BaseException], None] | None = None) -> list[Entry]:
    """Add every hubcompare model of ``author`` (in ``population``) that ``list_models`` finds, pinned to its sha.

    Names are ``OWNER--NAME``. Existing entries of the same name are updated. Nothing is written unless every
    listed model passes the name rules (a Hub's listing is checked like a user's input). An endpoint where nothing
    answers is one HubUnavailableError naming it, after a few quick looks (seconds); retries are bounded (see
    ``with_retries``), and ``on_retry(attempt, error)`` hears of each.
    """
    check_namespace(author)
    if population is not None:
        check_name(population, "population")
    registry.user()  # an unusable registry database fails here, before the Hub is asked
    api = api or hub_api()
    endpoint = getattr(api, "endpoint", None)
    what = f"registry sync: list the models of {author}"
    tags = ["hubcompare"] + ([f"population-{population}"] if population else [])
    models = with_retries(lambda: list(api.list_models(author=author, filter=tags, cardData=True, full=True)),
                          what, on_retry=on_retry, endpoint=endpoint, probe_first=True)
    entries = []
    for m in models:
        repo_id = listed_repo_id(m.id, endpoint)
        sha = m.sha or with_retries(lambda: api.model_info(repo_id).sha, f"look up {repo_id}", on_retry=on_retry,
                                    endpoint=endpoint)
        reference = listed_reference(repo_id, sha, endpoint)
        card = (m.card_data.to_dict() if m.card_data else {}).get("hubcompare", {})
        pops = [t.removeprefix("population-") for t in m.tags or [] if isinstance(t, str) and t.startswith("population-")]
        entries.append(entry_from_meta(check_registry_name(repo_id.replace("/", "--")), reference, ModelMeta.from_dict(card),
                                       sha, [p for p in pops if NAME.fullmatch(p)]))
    return [registry.add(entry, replace=True) for entry in entries]
