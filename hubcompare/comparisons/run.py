"""Run a comparison request: return the stored result when the store holds it, else compute it into the store; export.

How a kind plugs in. A kind is an object (a module-level instance) with a ``spec`` (a :class:`~.kindspec.KindSpec`:
its name, arity, options typed with their ranges, the fields that do not apply, the files it writes by role) and
three methods (the :class:`~.kindspec.Kind` protocol):

- ``prepare(req, ctx: Context) -> Prepared``: the cheap part. Resolve the models (or sides) and the dataset,
  and build ``key_inputs``: everything that changes the numbers (each model's commit sha and weights sha256,
  the dataset's name, split and fingerprint, the tapped layers, every numeric setting, the hubcompare version;
  never device, threads, backend, labels or format). Put what ``compute`` needs in ``Prepared.state``.
- ``compute(req, prepared, staging: Path, on_progress, compare) -> (summary, warnings)``: the expensive part.
  Write the result's files into ``staging`` under the names the CLI writes to ``--out`` (figures as PNG), and
  return a small JSON ``summary`` (headline numbers for lists and page headers; what ``export`` needs to
  re-label) and the warnings a user should see. ``on_progress(stage_text, done, total_or_None)``; ``compare``:
  what computes a CKA pass (``similarity.engine.compare``'s signature; None = that function).
- ``export(stored, req, out_dir) -> list[Path]``: write into ``out_dir`` exactly the files a fresh run with
  ``req`` writes (same names, ``req.fmt`` figures, ``req.labels``), re-rendering from the stored JSON where the
  format or the labels differ from the stored ones; return the paths in the order the CLI lists them.

Register it: the kind's module lists its kinds in a module-level ``KINDS`` tuple and :mod:`.kinds` lists the module.
A kind module imports ``Prepared``, ``Context`` and the option types from :mod:`.kindspec` (a leaf), never from this
module or from :mod:`.requests` (which reads the specs): no cycle. :func:`run_request` then keys, looks up,
computes and stores it; :func:`export` writes it to ``--out``; the contract test (tests/test_kind_contract.py) checks
every registered kind the same way.

What is stored is the request without its labels and format (:func:`neutral`): the models' card names, so no
requester's labels become another's; ``export`` applies each request's own. A stored result pulled from the Hub
answers a request only when trusted (``trust_pulled``, ``$HUBCOMPARE_TRUST_PULLED``); otherwise it is computed here
and replaces the pulled copy (``Outcome.superseded`` and a notice say so).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from ..results.keys import result_key
from ..results.store import ResultStore, StoredResult
from .kinds import kind_for
from .kindspec import Context, Kind, Prepared, Progress
from .requests import ComparisonRequest

__all__ = ["Context", "Kind", "Outcome", "Prepared", "TRUST_PULLED_ENV", "export", "files_of", "kind_for", "neutral",
           "run_request", "trust_pulled_default"]

TRUST_PULLED_ENV = "HUBCOMPARE_TRUST_PULLED"  # 1: pulled results answer requests (the service's setting; CLI --trust-pulled)


@dataclass
class Outcome:
    """A request's result: ``stored`` (its entry in the store), whether it came from the store, notices from
    resolving the models and the result's warnings (the stored ones on a hit). ``superseded``: the source of a pulled
    result of the same key that was not trusted to answer (this one was computed here and replaced it)."""

    stored: StoredResult
    from_store: bool
    notices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    superseded: str | None = None

    @property
    def key(self) -> str:
        return self.stored.key


def trust_pulled_default() -> bool:
    """Whether pulled results answer requests when the caller does not say: ``$HUBCOMPARE_TRUST_PULLED`` (1/true/yes)."""
    return os.environ.get(TRUST_PULLED_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def neutral(req: ComparisonRequest) -> ComparisonRequest:
    """``req`` without its presentation (labels, figure format): what is computed and stored, so one requester's
    labels and title are never another's (each request's are applied when its files are written: :func:`export`)."""
    return replace(req, labels=None, fmt="png")


def run_request(req: ComparisonRequest, *, store: ResultStore | None = None, recompute: bool = False,
                data_dir: str | Path | None = None, max_params: int = DEFAULT_MAX_PARAMS, device: Any = "auto",
                compare: Callable | None = None, on_progress: Progress | None = None, cache_dir: str | Path | None = None,
                registry=None, api=None, trust_pulled: bool | None = None) -> Outcome:
    """The result of ``req``: the stored one when its key is in ``store`` (unless ``recompute``), else computed
    into the store (a failure leaves no entry). ``compare``: what computes a CKA pass (e.g. Ray shards' compare);
    ``on_progress(stage, done, total)``: live progress (stages as text, ``total`` None when unknown).

    A stored result pulled from the Hub (``stored.pulled``) answers only when ``trust_pulled`` (None: the
    ``$HUBCOMPARE_TRUST_PULLED`` setting, default off); otherwise the result is computed here, replaces the pulled
    one, and a notice says so. The stored result is computed without ``req``'s labels and format (:func:`neutral`)."""
    kind = kind_for(req.kind)
    progress = on_progress or (lambda stage, done, total: None)
    store = store if store is not None else ResultStore()
    trust = trust_pulled_default() if trust_pulled is None else bool(trust_pulled)
    ctx = Context(data_dir, max_params, device, cache_dir, registry, api, progress)
    base = neutral(req)
    prepared = kind.prepare(base, ctx)
    key = result_key(req.kind, prepared.key_inputs)
    notices, superseded = list(prepared.notices), None
    hit = store.get(key)
    if hit is not None and not recompute:
        if not hit.pulled or trust:
            return Outcome(hit, True, notices, list(hit.summary.get("warnings", [])))
        superseded = hit.source
        notices.append(f"a pulled result {key[:12]} ({hit.source}) exists; computing here (its numbers are not used "
                       "unchecked); --trust-pulled to use it")
    started = time.perf_counter()
    with store.staging() as staging:
        summary, warnings = kind.compute(base, prepared, staging, progress, compare)
        seconds = time.perf_counter() - started
        if (recompute or superseded) and store.get(key) is not None:
            store.remove(key)  # the new computation replaces the stored (or untrusted pulled) one
        stored = store.put(key, req.kind, title=prepared.title, request=base.to_json(), key_inputs=prepared.key_inputs,
                           summary=summary | {"warnings": list(dict.fromkeys(warnings))}, models=prepared.models,
                           dataset=prepared.dataset, staging=staging, seconds=seconds)
    return Outcome(stored, False, notices, list(warnings), superseded)


def export(outcome_or_stored: Outcome | StoredResult, req: ComparisonRequest, out_dir: str | Path) -> list[Path]:
    """Write the result into ``out_dir`` as a fresh run of ``req`` would (same file names, ``req.fmt``, ``req.labels``)."""
    stored = outcome_or_stored.stored if isinstance(outcome_or_stored, Outcome) else outcome_or_stored
    return kind_for(stored.kind).export(stored, req, Path(out_dir))


def files_of(req: ComparisonRequest, written: list[Path], role: str) -> list[Path]:
    """The exported files that play ``role`` in ``req``'s kind (``document``, ``figure``, ``table``...: its spec's
    ``files``), in the order export wrote them: how a front end reads a result, never by position."""
    return kind_for(req.kind).spec.paths(written, role, req.fmt)
