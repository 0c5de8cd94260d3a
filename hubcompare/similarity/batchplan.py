"""How many examples per minibatch: enough minibatches for the jackknife standard error to mean something.

The standard error of every CKA value is a leave-one-minibatch-out jackknife, so it needs several
minibatches: one gives none (NaN), two or three give a number with almost no information in it.
The paper's batch of 256 leaves one or two minibatches on a small test split (500 digits examples),
so when the user names no batch size one is chosen to give ``TARGET_BATCHES`` per pass (between
``MIN_AUTO_BATCH`` and ``DEFAULT_BATCH``); a plan the user chose that leaves too few is kept, and said.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .cka import MIN_BATCH

__all__ = ["BatchPlan", "DEFAULT_BATCH", "MIN_AUTO_BATCH", "MIN_SE_BATCHES", "Minibatch", "TARGET_BATCHES", "choose_batch_plan",
           "minibatch_plan"]

DEFAULT_BATCH = 256  # the paper's minibatch
MIN_AUTO_BATCH = 32  # below this an automatic choice would trade too much per-batch noise for batches
TARGET_BATCHES = 8  # per pass, when the batch size is chosen automatically
MIN_SE_BATCHES = 3  # fewer minibatches in all: no usable standard error (printed as n/a)
RELIABLE_SE_BATCHES = 8  # fewer: the standard error is printed, with a warning that it is rough


@dataclass(frozen=True)
class BatchPlan:
    """The batch size a comparison runs with, how it was chosen, and how many minibatches it gives."""

    batch_size: int
    chosen: str  # "given" (--batch-size) or "auto"
    num_examples: int
    passes: int
    batches_per_pass: int

    @property
    def num_batches(self) -> int:
        return self.batches_per_pass * self.passes

    @property
    def standard_error(self) -> str:
        """``none`` (too few minibatches for any), ``rough`` (a few) or ``jackknife``."""
        if self.num_batches < MIN_SE_BATCHES:
            return "none"
        return "rough" if self.num_batches < RELIABLE_SE_BATCHES else "jackknife"

    def describe(self) -> str:
        how = "chosen for the standard errors" if self.chosen == "auto" else "--batch-size"
        return (f"batch {self.batch_size} ({how}): {self.num_examples} examples in {self.batches_per_pass} "
                f"minibatch{'es' if self.batches_per_pass != 1 else ''} a pass, {self.num_batches} in all")

    def warning(self) -> str | None:
        """What to tell the user when the standard errors are unavailable or rough (None when they are fine)."""
        smaller = _batch_for(self.num_examples)
        fix = (f"use a smaller --batch-size (e.g. {smaller}) or more examples, or omit --batch-size to have one chosen"
               if smaller < self.batch_size else  # already the smallest batch the plan would choose: only data helps
               f"compare more examples (batches below {MIN_AUTO_BATCH} trade too much per-batch noise) or more --passes")
        if self.standard_error == "none":
            return (f"{self.num_batches} minibatch{'es' if self.num_batches != 1 else ''} of {self.batch_size}: the jackknife "
                    f"standard error needs at least {MIN_SE_BATCHES}, so none is reported (n/a); {fix}.")
        if self.standard_error == "rough":
            return (f"only {self.num_batches} minibatches of {self.batch_size}: the jackknife standard errors are rough "
                    f"(at least {RELIABLE_SE_BATCHES} are advised); {fix}.")
        return None

    def to_json(self) -> dict:
        return asdict(self) | {"num_batches": self.num_batches, "standard_error": self.standard_error}


def choose_batch_plan(num_examples: int, batch_size: int | None = None, passes: int = 1,
                      min_batch: int = MIN_BATCH) -> BatchPlan:
    """The plan for ``num_examples`` examples: ``batch_size`` when given, else the paper's 256 where that leaves
    ``TARGET_BATCHES`` minibatches per pass, else a smaller batch that does (never below ``MIN_AUTO_BATCH``).
    ``min_batch``: the smallest minibatch the chosen measures take (a short last slice is merged into the one before)."""
    chosen = "given" if batch_size is not None else "auto"
    size = batch_size if batch_size is not None else _batch_for(num_examples)
    per_pass = _batches_per_pass(num_examples, size, min_batch) if num_examples > 0 and size > 0 else 0
    return BatchPlan(size, chosen, num_examples, passes, per_pass)


def _batches_per_pass(num_examples: int, batch_size: int, min_batch: int = MIN_BATCH) -> int:
    """How many minibatches :func:`minibatch_plan` cuts a pass into: a short last slice below ``min_batch`` (the
    estimator's minimum, or a chosen measure's) is merged into the one before it."""
    starts = math.ceil(num_examples / batch_size)
    return starts - 1 if starts > 1 and num_examples - (starts - 1) * batch_size < min_batch else starts


def _batch_for(num_examples: int) -> int:
    return max(MIN_AUTO_BATCH, min(DEFAULT_BATCH, math.ceil(num_examples / TARGET_BATCHES)))


@dataclass(frozen=True)
class Minibatch:
    """One minibatch of a comparison: positions ``start:stop`` of pass ``pass_index``'s shuffled order."""

    pass_index: int
    start: int
    stop: int
    indices: torch.Tensor  # example indices into the dataset


def minibatch_plan(num_examples: int, batch_size: int, passes: int = 1, seed: int = 0,
                   min_batch: int = MIN_BATCH) -> list[Minibatch]:
    """The minibatches :func:`compare` feeds, in order: each pass a fresh shuffle from one generator
    seeded with ``seed``, cut into ``batch_size`` slices; a short final slice below ``min_batch`` (the estimator's
    minimum ``MIN_BATCH``, or what a chosen measure needs: mknn's k + 1) is merged into the one before it."""
    starts = list(range(0, num_examples, batch_size))
    if len(starts) > 1 and num_examples - starts[-1] < min_batch:
        starts.pop()
    bounds = list(zip(starts, starts[1:] + [num_examples]))
    generator = torch.Generator().manual_seed(seed)
    plan = []
    for p in range(passes):
        order = torch.randperm(num_examples, generator=generator)
        plan += [Minibatch(p, lo, hi, order[lo:hi]) for lo, hi in bounds]
    return plan
