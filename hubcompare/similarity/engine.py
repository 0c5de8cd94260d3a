"""The comparison engine: one streaming pass over a dataset feeding every model the same minibatches.

For each minibatch, each model runs forward once; every selected layer's activation is reduced
to its U-centred Gram matrix the moment it is produced and then dropped (memory is
O(total layers x batch^2), not the activations of a batch). The stacked Grams of all models go
into one :class:`~hubcompare.similarity.cka.MinibatchCKA`, so a single matrix product per batch yields every
within- and cross-model layer pair, for any number of models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..data.datasets import ImageDataset, load_dataset
from ..errors import CompareError, DatasetChoiceError
from ..models.inputs import InputSpec
from ..provenance import package_versions
from .capture import LayerCapture
from .cka import MIN_BATCH, MinibatchCKA, gram, u_center
from .results import CKAResult

if TYPE_CHECKING:
    from ..hub.references import ResolvedModel

__all__ = ["CompareModel", "Comparison", "Minibatch", "compare", "comparison_dataset", "minibatch_plan", "remove_top_pc"]

# what a compared model's provenance records from its metadata, beyond what identifies it (SUMMARY_KEYS)
PROVENANCE_KEYS = ("recipe_hash", "weights_sha256")


@dataclass
class CompareModel:
    """A model to compare: the reference the user gave, the module, and its provenance record."""

    ref: str
    model: nn.Module
    provenance: dict = field(default_factory=dict)
    layers: Sequence[str] | None = None  # glob patterns; None = the model's default layers

    @classmethod
    def from_resolved(cls, resolved: ResolvedModel, layers: Sequence[str] | None = None, ref: str | None = None) -> CompareModel:
        """A resolved reference (``hubcompare.hub.resolve_reference``) with its provenance: the pinned
        reference, commit, folder, architecture and model args, and what its metadata says about it.
        ``ref``: the name results use (default: the reference as resolved)."""
        meta = resolved.meta
        block = meta.to_dict()
        provenance = {
            "resolved": str(resolved.pinned),
            "commit_sha": resolved.commit_sha,
            "path": str(resolved.path) if resolved.path else None,
            "architecture": resolved.config.get("architecture"),
            "model_args": resolved.config.get("model_args", {}),
        } | meta.summary() | {k: block[k] for k in PROVENANCE_KEYS if k in block}
        return cls(ref if ref is not None else str(resolved.reference), resolved.model, provenance, layers)

    @property
    def trained_on(self) -> str | None:
        """The dataset the model was trained on, when its provenance records it."""
        return self.provenance.get("dataset")


def comparison_dataset(models: Sequence[CompareModel], name: str | None = None, split: str = "test",
                       data_dir: str | Path | None = None) -> ImageDataset:
    """The dataset to compare ``models`` on: ``name``, else the one dataset all of them were trained on."""
    if name is None:
        trained_on = {m.trained_on for m in models if m.trained_on}
        if len(trained_on) != 1:
            raise DatasetChoiceError(
                "cannot tell which dataset to compare on"
                + (f" (the models were trained on {sorted(trained_on)})" if trained_on else " (no model records its training data)")
                + ": name the dataset (and, for local data, its folder).",
                params=("dataset", "data_dir"),
            )
        name = trained_on.pop()
    return load_dataset(name, split, data_dir)


@dataclass
class Comparison:
    """Every pairwise CKA matrix of one pass. ``pair(i, j)``: model i's layers (rows) vs model j's."""

    models: list[CompareModel]
    captures: list[LayerCapture]
    offsets: list[int]
    value: np.ndarray
    se: np.ndarray
    settings: dict
    warnings: list[str]
    pc1_removed: list[CKAResult | None]

    def pair(self, i: int, j: int) -> CKAResult:
        a, b = slice(self.offsets[i], self.offsets[i + 1]), slice(self.offsets[j], self.offsets[j + 1])
        ca, cb = self.captures[i], self.captures[j]
        return CKAResult(
            ref_a=self.models[i].ref,
            ref_b=self.models[j].ref,
            layers_a=ca.names,
            layers_b=cb.names,
            boundaries_a=ca.stage_boundaries(),
            boundaries_b=cb.stage_boundaries(),
            value=self.value[a, b].copy(),
            se=self.se[a, b].copy(),
            kind="within" if i == j else "cross",
            provenance=self.provenance(i, j),
            warnings=[w for w in self.warnings if self.models[i].ref in w or self.models[j].ref in w or "all models" in w],
        )

    def provenance(self, i: int, j: int) -> dict:
        return {
            "models": [self.models[k].provenance | {"ref": self.models[k].ref} for k in dict.fromkeys((i, j))],
            **self.settings,
        }


def remove_top_pc(k: torch.Tensor) -> torch.Tensor:
    """Gram of the centred features with their first principal component removed: K - s1^2 u1 u1^T."""
    evals, evecs = torch.linalg.eigh(k.to(torch.float64))
    u1 = evecs[:, -1:]
    return k.to(torch.float64) - evals[-1] * (u1 @ u1.T)


@dataclass(frozen=True)
class Minibatch:
    """One minibatch of a comparison: positions ``start:stop`` of pass ``pass_index``'s shuffled order."""

    pass_index: int
    start: int
    stop: int
    indices: torch.Tensor  # example indices into the dataset


def minibatch_plan(num_examples: int, batch_size: int, passes: int = 1, seed: int = 0) -> list[Minibatch]:
    """The minibatches :func:`compare` feeds, in order: each pass a fresh shuffle from one generator
    seeded with ``seed``, cut into ``batch_size`` slices; a short final slice below the estimator's
    minimum (``MIN_BATCH``) is merged into the one before it."""
    starts = list(range(0, num_examples, batch_size))
    if len(starts) > 1 and num_examples - starts[-1] < MIN_BATCH:
        starts.pop()
    bounds = list(zip(starts, starts[1:] + [num_examples]))
    generator = torch.Generator().manual_seed(seed)
    plan = []
    for p in range(passes):
        order = torch.randperm(num_examples, generator=generator)
        plan += [Minibatch(p, lo, hi, order[lo:hi]) for lo, hi in bounds]
    return plan


def compare(
    models: Sequence[CompareModel],
    dataset: ImageDataset,
    batch_size: int = 256,
    passes: int = 1,
    seed: int = 0,
    num_examples: int | None = None,
    remove_pc1: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> Comparison:
    """Minibatch CKA between every layer pair of every model (and within each model).

    ``passes`` sweeps over the (optionally first ``num_examples``) examples, each in a fresh
    seeded shuffle; all models always see the same minibatch (:func:`minibatch_plan`). With
    ``remove_pc1`` each model's within-model CKA is also computed after removing every layer's
    first principal component per minibatch.
    """
    if batch_size < MIN_BATCH:
        raise CompareError(
            f"batch_size {batch_size} is too small: the unbiased HSIC estimator needs n > 3 examples per batch "
            "(use >= 64; the paper uses 256).",
            params=("batch_size",),
        )
    if passes < 1:
        raise CompareError(f"passes must be >= 1, got {passes}", params=("passes",))
    n_total = len(dataset) if num_examples is None else min(num_examples, len(dataset))
    if n_total < MIN_BATCH:
        raise CompareError(f"{n_total} examples are too few for the unbiased estimator (need at least {MIN_BATCH})",
                           params=("num_examples",))
    warnings: list[str] = []
    captures, specs = [], []
    for m in models:
        exclude = []
        num_classes = getattr(m.model, "num_classes", None)
        if num_classes is not None and num_classes != dataset.num_classes:
            exclude = ["logits", "output"]
            if m.layers and any(p in ("logits", "output") for p in m.layers):
                raise CompareError(
                    f"{m.ref} has a {num_classes}-class head but {dataset.name} has {dataset.num_classes} classes: "
                    "its logits mean nothing here. CKA does not need the head: drop 'logits' from the layer patterns.",
                    params=("layers",),
                )
            warnings.append(
                f"{m.ref}: its head has {num_classes} classes, {dataset.name} has {dataset.num_classes}; CKA does not "
                "need the head, so its output layer is left out and hidden layers are compared."
            )
        spec = InputSpec.from_model(m.model, dataset.image_shape)
        captures.append(LayerCapture(m.model, m.layers, exclude=exclude, example=spec(dataset.images[:2])))
        specs.append(spec)
    sizes = [len(c.layers) for c in captures]
    offsets = [0, *np.cumsum(sizes).tolist()]
    acc = MinibatchCKA(offsets[-1])
    pc_acc = [MinibatchCKA(s) for s in sizes] if remove_pc1 else []

    plan = minibatch_plan(n_total, batch_size, passes, seed)
    for done, mb in enumerate(plan, 1):
        images = dataset.images[mb.indices]
        n = len(mb.indices)
        u_all = torch.empty(offsets[-1], n, n, dtype=torch.float64)
        for mi, (cap, spec) in enumerate(zip(captures, specs)):
            pc_grams = []

            def sink(li: int, act: torch.Tensor, mi=mi, cap=cap, pc_grams=pc_grams) -> None:
                k = gram(act, centred=remove_pc1)  # PC1 removal needs the centred Gram; HSIC alone does not
                if not torch.isfinite(k).all():  # NaN/inf anywhere in the activations reaches the Gram matrix
                    raise CompareError(
                        f"{models[mi].ref}: layer {cap.names[li]} produced NaN/inf activations (or ones whose products "
                        f"overflow float32) on pass {mb.pass_index + 1}, examples {mb.start}-{mb.stop - 1} of the shuffled "
                        "order; check the model's weights and input preprocessing."
                    )
                u_center(k, out=u_all[offsets[mi] + li])
                if remove_pc1:
                    pc_grams.append(u_center(remove_top_pc(k)))

            cap.run(spec(images), sink)
            if remove_pc1:
                pc_acc[mi].update(torch.stack(pc_grams))
        acc.update(u_all)
        if on_batch:
            on_batch(done, len(plan))
    est = acc.compute()
    for i in est.undefined:
        mi = int(np.searchsorted(offsets, i, side="right") - 1)
        warnings.append(
            f"{models[mi].ref}: layer {captures[mi].names[i - offsets[mi]]} is constant on every example compared; "
            "its CKA is undefined (shown as NaN, never clamped)."
        )
    settings = {
        "dataset": dataset.describe(),
        "num_examples": n_total,
        "batch_size": batch_size,
        "passes": passes,
        "seed": seed,
        "num_batches": est.num_batches,
        "estimator": "linear CKA, unbiased HSIC_1 per minibatch, batch-size-weighted sums, float64 accumulation",
        "standard_error": "leave-one-minibatch-out jackknife",
        "inputs": {m.ref: spec.describe(dataset.image_shape) for m, spec in zip(models, specs)},
        "layers": {m.ref: cap.names for m, cap in zip(models, captures)},
        "package_versions": package_versions(),
    }
    comp = Comparison(list(models), captures, offsets, est.value.numpy(), est.se.numpy(), settings, warnings, [])
    for mi in range(len(models)):
        if remove_pc1:
            pe = pc_acc[mi].compute()
            r = comp.pair(mi, mi)
            r.value, r.se, r.kind = pe.value.numpy(), pe.se.numpy(), "within-pc1-removed"
            comp.pc1_removed.append(r)
        else:
            comp.pc1_removed.append(None)
    return comp
