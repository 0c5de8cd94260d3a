"""What every stored comparison command does around ``run_request``: --recompute, --trust-pulled, live progress, the
stored line (which says where a stored answer came from).

One copy for cross-cka, cka, blocks, agreement, class-diff, across-seeds, probes and delete-blocks."""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .options import err_console, pick_device, set_threads, warn

Recompute = Annotated[bool, typer.Option(
    "--recompute", help="Compute again even when the result store holds this comparison (the new result replaces it). "
                        "Without it a stored result of the same models (commit / weights hash), data and settings is "
                        "returned at once; labels and --format are re-rendered from it.")]


TrustPulled = Annotated[bool, typer.Option(
    "--trust-pulled", envvar="HUBCOMPARE_TRUST_PULLED",
    help="Let a result pulled from the Hub (`results pull`) answer this request. Without it a pulled result of the "
         "same key is not used: the comparison is computed here (replacing it) and a line says so; `hubcompare "
         "results verify KEY` checks a pulled result without replacing it.")]


def when(created: str) -> str:
    """``2025-06-01T12:00:03+00:00`` -> ``2025-06-01 12:00 UTC`` (as stored, if it does not parse)."""
    try:
        return datetime.fromisoformat(created).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return created


class Live:
    """run_request's progress on ``con``: "loading ..." stages as a status line, the rest as progress bars (their
    descriptions name the device, and Ray workers with ``--backend ray``)."""

    def __init__(self, con, backend: str = "local"):
        self.con, self.backend = con, backend
        self.status = self.progress = None
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage.startswith("loading "):
            if self.progress is None and self.status is None:
                self.status = self.con.status(escape(stage))
                self.status.start()
            elif self.status is not None:
                self.status.update(escape(stage))
            return
        self._stop_status()
        if self.progress is None:
            self.progress = Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=self.con)
            self.progress.start()
        if stage not in self.tasks:
            text = stage[:-1] + ", Ray workers)" if self.backend == "ray" and stage.endswith(")") else stage
            self.tasks[stage] = self.progress.add_task(escape(text), total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def __enter__(self) -> "Live":
        return self

    def __exit__(self, *exc) -> None:
        self._stop_status()
        if self.progress is not None:
            self.progress.stop()


class LazyRay:
    """The Ray-sharded CKA pass, started on first use (a stored result never starts Ray); None for the local backend."""

    def __init__(self, backend: str, ray_address, workers, threads, max_params: int):
        self.args, self.backend, self.fn, self.stack = (ray_address, workers, threads, max_params), backend, None, ExitStack()

    def __call__(self, *args, **kwargs):
        if self.fn is None:
            from ..similarity.distributed import RayShards

            self.fn = self.stack.enter_context(RayShards(*self.args)).compare
        return self.fn(*args, **kwargs)

    def __enter__(self):
        return self if self.backend == "ray" else None  # None: run_request's local engine

    def __exit__(self, *exc) -> None:
        self.stack.close()


def run_stored(req, con, *, recompute: bool, data_dir=None, threads=None, max_params: int = DEFAULT_MAX_PARAMS,
               device: str = "auto", backend: str = "local", ray_address=None, workers=None, cache_dir=None,
               trust_pulled: bool = False):
    """Threads, the device (checked before any model loads), then the stored result of ``req`` or a fresh one (stored);
    its notices printed, and a line on stderr when it came from the store, saying where it was computed (here, or
    pulled from a Hub repo). The result's warnings are the caller's."""
    from ..comparisons.run import run_request

    set_threads(threads)
    dev = pick_device(device)
    with LazyRay(backend, ray_address, workers, threads, max_params) as compare, Live(con, backend) as live:
        outcome = run_request(req, recompute=recompute, data_dir=data_dir, max_params=max_params, device=dev,
                              compare=compare, on_progress=live, cache_dir=cache_dir, trust_pulled=trust_pulled)
    warn(outcome.notices)
    if outcome.from_store:
        err_console.print(stored_line(outcome.stored), soft_wrap=True, highlight=False)
    return outcome


def default_out(stem: str, outcome, req) -> Path:
    """The folder a command writes to without ``--out``: ``results/<stem>-<KEY8>``, KEY8 the first 8 hex digits of the
    result's key (``results list`` shows it), so another request (other models, data or settings) never writes into
    it; labels change the files' contents, so a request with ``--label``s adds a digest of them (``-L1a2b``). The
    same request again writes the same files there (a ``--format`` adds its figures beside the others)."""
    tag = outcome.key[:8]
    if req.labels and any(req.labels):
        tag += "-L" + hashlib.sha256(json.dumps(list(req.labels)).encode()).hexdigest()[:4]
    return Path("results") / f"{stem}-{tag}"


def stored_line(s) -> str:
    """``stored result KEY (computed ... in 4.2 s); ...``; a pulled one says so, and where from."""
    if s.pulled:
        return (f"stored result {s.key[:12]} PULLED from {escape(s.source)} (computed elsewhere {when(s.created)}, not "
                f"checked here: `hubcompare results verify {s.key[:12]}` recomputes it); --recompute to compute here")
    return f"stored result {s.key[:12]} (computed {when(s.created)} in {s.seconds:.1f} s); --recompute to compute again"


def stored_json(outcome) -> dict:
    """What --json adds: the result's key in the store, whether it came from there, and its origin (``computed`` or
    the ``hf-hub-result:OWNER/NAME@SHA`` it was pulled from)."""
    return {"result_key": outcome.stored.key, "from_store": outcome.from_store, "source": outcome.stored.source,
            "pulled": outcome.stored.pulled}
