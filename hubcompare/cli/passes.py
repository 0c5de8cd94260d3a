"""Options and helpers of commands that run a comparison pass (across-seeds, report, compare, grounding): the batch
plan, the backend, the measures.

They are the same as cli/compare.py's (whose cross-cka dispatches population sides to across-seeds, so across-seeds
cannot import compare.py back: no import cycles); compare.py can import them from here instead of keeping its own."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .options import one_of, seed_range

Layers = Annotated[Optional[list[str]], typer.Option(
    "--layers", help="Glob pattern(s) over layer names, e.g. '*.out' (repeatable). Default: for a hubcompare ResNet the stem "
                     "and every block output ('stem', '*.out'); for other models their default layers "
                     "(`hubcompare layers REF` lists them).")]
Dataset = Annotated[Optional[str], typer.Option("--dataset", help="Dataset to compare on (default: the models' training dataset).")]
Split = Annotated[str, typer.Option("--split", help="train or test.")]
BatchSize = Annotated[Optional[int], typer.Option(
    "--batch-size",
    help="Minibatch size (the unbiased estimator needs > 3). Default: the paper's 256, or less where that leaves fewer than "
         "8 minibatches a pass for the standard errors (never below 32); the choice is printed and recorded.",
    show_default=False)]
Passes = Annotated[int, typer.Option("--passes", help="Passes over the data, each freshly shuffled with --seed.")]
Seed = Annotated[int, typer.Option("--seed", min=0, callback=seed_range, help="Seed of the minibatch shuffles.")]
Examples = Annotated[Optional[int], typer.Option("--examples", help="Use only the first N examples of the split.")]
Backend = Annotated[str, typer.Option(
    "--backend", callback=one_of("local", "ray"),
    help="local: this process; ray: the minibatches sharded over Ray workers, each loading the models once, summed "
         "here: the same numbers (pip install 'hubcompare[ray]').")]
RayAddress = Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address (e.g. auto, ray://HOST:10001); default: start a local Ray. Model folders must be on a filesystem every node sees.")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=1, help="Ray: shards of the minibatches, one worker each (default: the cluster's CPUs, at most one per minibatch); each uses --threads threads (default: the CPUs split between them).")]


def plan_for(ds, examples: Optional[int], batch_size: Optional[int], passes: int):
    """The batch plan (:mod:`hubcompare.similarity.batchplan`): the given batch size, or one leaving minibatches for the SE."""
    from ..similarity.batchplan import choose_batch_plan

    n = len(ds) if examples is None else min(examples, len(ds))
    return choose_batch_plan(n, batch_size, passes)


def check_backend(backend: str, ray_address: Optional[str], workers: Optional[int]) -> None:
    """Refuse Ray options without the ray backend, and a Ray address nothing answers at, before any model is loaded."""
    if backend != "ray":
        for flag, value in (("--ray-address", ray_address), ("--workers", workers)):
            if value is not None:
                raise typer.BadParameter(f"{flag} needs --backend ray.", param_hint=f"'{flag}'")
        return
    from ..errors import CompareBackendError
    from ..training.backends import check_ray_address

    check_ray_address(ray_address, CompareBackendError)


@contextmanager
def comparer(backend: str, ray_address: Optional[str], workers: Optional[int], threads: Optional[int], max_params: int, con):
    """What computes the CKA: ``compare`` in this process, or the same sharded over Ray (started or reached here)."""
    if backend != "ray":
        from ..similarity.engine import compare

        yield compare
        return
    from ..similarity.distributed import RayShards

    with con.status(f"connecting to Ray at {escape(ray_address)}" if ray_address else "starting Ray"):
        shards = RayShards(ray_address, workers, threads, max_params)
    with shards:
        yield shards.compare


MeasureNames = Annotated[list[str], typer.Option(
    "--measure", help="A measure to compute (repeatable; 'all' = every one; `hubcompare measures` lists them). All run "
                      "in the same pass over the data.")]
MeasureParams = Annotated[Optional[list[str]], typer.Option(
    "--param", help="A measure's parameter, MEASURE.NAME=VALUE (repeatable), e.g. rbf-cka.frac=0.5, mknn.k=20.")]


def measure_params(given: list[str] | None) -> dict[str, dict]:
    """``--param MEASURE.NAME=NUMBER`` options as {measure: {name: number}} (checked against the measures later)."""
    out: dict[str, dict] = {}
    for item in given or []:
        head, eq, value = item.partition("=")
        measure, dot, name = head.partition(".")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not (eq and dot and measure and name) or number is None:
            raise typer.BadParameter(f"{item!r} is not MEASURE.NAME=NUMBER (e.g. rbf-cka.frac=0.5)", param_hint="'--param'")
        out.setdefault(measure, {})[name] = int(number) if number.is_integer() and "." not in value else number
    return out
