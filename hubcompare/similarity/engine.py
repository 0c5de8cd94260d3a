"""The comparison engine: one streaming pass over a dataset feeding every model the same minibatches.

For each minibatch, each model runs forward once; every selected layer's activation is reduced
to its U-centred Gram matrix the moment it is produced and then dropped (memory is
O(total layers x batch^2), not the activations of a batch). The stacked Grams of all models go
into one :class:`~hubcompare.similarity.cka.MinibatchCKA`, so a single matrix product per batch yields every
within- and cross-model layer pair, for any number of models.

Devices (``device``): the models run there in full float32 (TF32 off), fed each minibatch's uint8
images (the whole split is copied there once when it is small). Two pipelines do the same
arithmetic: ``cpu`` (cache-sized blocked Gram products, the raw product when the features' offset is
small, each Gram checked as it is made) and ``accelerator`` (one centred product per Gram, U-centring
and the HSIC products on the device, one finiteness check per batch read back a batch late, so the
host never waits for the GPU inside a pass). ``auto`` picks ``cpu`` on the CPU and ``accelerator``
elsewhere; choosing ``accelerator`` on the CPU is how it is tested without a GPU.

The forward is the fastest exact one the device has: autograd off altogether (``torch.inference_mode``) and,
where convolutions run faster so (the CPU: oneDNN, ``memory_format="auto"``), models and inputs channels-last
for the pass (the same float32 arithmetic in another order; the models' layouts are put back after), with
every convolution + BatchNorm (+ ReLU) chain run as one convolution (``fuse_batchnorm``,
:mod:`~hubcompare.models.fusion`: rounding-level changes, CKA within ~1e-8). The Grams read each tapped
activation in its own memory order (:func:`~.cka.flat_features`), so no tap is copied back to NCHW; on the
CPU their products run in oneDNN (:func:`~.cka.onednn_products`). The settings record the forward used.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..data.datasets import ImageDataset, load_dataset
from ..errors import CompareError, DatasetChoiceError, MeasureError
from ..models.devices import (
    MEMORY_FORMATS,
    channels_last_helps,
    describe_device,
    exact_float32,
    fast_float64,
    float64_device,
    memory_format,
    on_device,
    resolve_device,
)
from ..models.fusion import fused_inference
from ..models.inputs import InputSpec, unlike_training_data
from ..provenance import package_versions
from .batchplan import Minibatch, choose_batch_plan, minibatch_plan
from .capture import LayerCapture
from .latecheck import LateCheck
from .cka import HSIC_PRODUCTS, MIN_BATCH, MinibatchCKA, gram, gram_dense, onednn_products, u_center
from .measures import LinearCKA
from .measures.base import (FEATURES, FLOAT64_GRAM, ROW_STATS, LayerInputs, Measure, MeasureEstimate, centred_features,
                            double_centre, example_stats)
from .results import CKAResult
from .settings import MEASURE_PAIRS, PassSettings

if TYPE_CHECKING:
    from ..hub.references import ResolvedModel

__all__ = ["BatchContribution", "CompareModel", "Comparison", "ComparisonPass", "Minibatch", "PassSettings", "compare",
           "comparison_dataset", "minibatch_plan", "remove_top_pc"]

# what a compared model's provenance records from its metadata, beyond what identifies it (SUMMARY_KEYS)
PROVENANCE_KEYS = ("recipe_hash", "weights_sha256")
PIPELINES = ("auto", "cpu", "accelerator")
LAYOUTS = ("auto", *MEMORY_FORMATS)  # memory_format of the forward: auto = channels-last where it is faster
STAGE_BYTES = 1 << 30  # a dataset split up to this size is copied to the device once, not batch by batch


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
    measures: dict[str, MeasureEstimate] = field(default_factory=dict)  # by measure key, over all layers (cka too)
    measure_specs: dict[str, Measure] = field(default_factory=dict)

    def measure_pair(self, key: str, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Measure ``key``'s value and SE between model i's layers (rows) and model j's."""
        if i == j and key != "cka" and self.settings.get("measure_pairs") == "across":
            raise CompareError(f"{key} was computed across models only (measure_pairs='across'): model {i}'s layers "
                               "against its own need measure_pairs='all'", params=("measure_pairs",))
        a, b = slice(self.offsets[i], self.offsets[i + 1]), slice(self.offsets[j], self.offsets[j + 1])
        est = self.measures[key]
        return est.value.numpy()[a, b].copy(), est.se.numpy()[a, b].copy()

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


@dataclass
class BatchContribution:
    """What one minibatch of the plan adds to a comparison: its position in the plan, its examples, the
    all-pairs ``n * HSIC_1`` (:meth:`MinibatchCKA.contribution`) and, with ``remove_pc1``, the same per model
    after removing each layer's first principal component. Adding these in plan order is the estimate."""

    index: int
    size: int
    hsic: torch.Tensor
    pc_hsic: list[torch.Tensor] = field(default_factory=list)
    measures: dict[str, torch.Tensor] = field(default_factory=dict)  # every other measure's contribution, by key

    def cpu(self) -> BatchContribution:
        return BatchContribution(self.index, self.size, self.hsic.cpu(), [h.cpu() for h in self.pc_hsic],
                                 {k: h.cpu() for k, h in self.measures.items()})


def compare(models: Sequence[CompareModel], dataset: ImageDataset, settings: PassSettings | None = None, *,
            on_batch: Callable[[int, int], None] | None = None, **options) -> Comparison:
    """Minibatch CKA between every layer pair of every model (and within each model), and every other measure in
    ``measures`` (:mod:`.measures`) in the same pass (``Comparison.measures``, by measure key).

    ``passes`` sweeps over the (optionally first ``num_examples``) examples, each in a fresh
    seeded shuffle; all models always see the same minibatch (:func:`minibatch_plan`). With
    ``remove_pc1`` each model's within-model CKA is also computed after removing every layer's
    first principal component per minibatch.

    ``device``: where the models run and the Grams are made (``auto``, ``cpu``, ``cuda[:N]``, ``mps``); the
    models are moved there for the pass and back after. ``pipeline``: ``auto``, ``cpu`` or ``accelerator`` (see
    the module doc). ``hsic_products``: ``float64`` or ``float32`` (:meth:`MinibatchCKA.batch_hsic`); default:
    float64 where it is fast (CPUs, data-centre GPUs), float32 elsewhere. ``memory_format``: ``auto`` (channels-last
    for models with convolutions where that is faster: the CPU), ``channels_last`` or ``contiguous`` (NCHW).
    ``fuse_batchnorm``: run conv + BatchNorm (+ ReLU) chains as one convolution for the pass (module doc).
    ``measure_pairs``: ``all`` (default) or ``across``: the other measures only between two models' layers (and each
    layer with itself), NaN within a model; what ``compare`` and ``across-seeds`` report, for about half the cost of
    the costly measures with two models.
    All of it is recorded in the settings. ``batch_size`` None: the CLI's choice (:func:`~.batchplan.choose_batch_plan`).
    The settings come as a :class:`~.settings.PassSettings` (``settings``) and/or as its fields (``options``, which
    replace the record's). The same numbers from several processes: :mod:`hubcompare.similarity.distributed`.
    """
    with ComparisonPass(models, dataset, PassSettings.of(settings, **options)) as run:
        acc = run.accumulators()
        for c in run.contributions(on_batch=on_batch):
            run.add(acc, c)
        return run.result(acc, {"name": "local", "shards": 1})


class ComparisonPass:
    """One comparison's settings, checked, and its models set up (layers captured, devices chosen) for the
    pass: a context manager (the models are on the device, float32 exact, inside it). :meth:`contributions`
    runs the plan's minibatches (all, or some: a shard) and yields what each adds; :meth:`result` turns
    accumulated contributions into the :class:`Comparison`."""

    def __init__(self, models: Sequence[CompareModel], dataset: ImageDataset, settings: PassSettings | None = None,
                 **options):
        self.settings = st = PassSettings.of(settings, **options)
        batch_size, passes, seed, pipeline, memory_format = st.batch_size, st.passes, st.seed, st.pipeline, st.memory_format
        self.dev = dev = resolve_device(st.device)
        if pipeline not in PIPELINES:
            raise CompareError(f"pipeline must be one of {PIPELINES}, not {pipeline!r}")
        if st.measure_pairs not in MEASURE_PAIRS:
            raise CompareError(f"measure_pairs must be one of {MEASURE_PAIRS}, not {st.measure_pairs!r}",
                               params=("measure_pairs",))
        if memory_format not in LAYOUTS:
            raise CompareError(f"memory_format must be one of {LAYOUTS}, not {memory_format!r}", params=("memory_format",))
        self.memory_format, self.fuse_batchnorm = memory_format, st.fuse_batchnorm
        self.pipeline = ("cpu" if dev.type == "cpu" else "accelerator") if pipeline == "auto" else pipeline
        self.products = st.hsic_products or ("float64" if fast_float64(dev) else "float32")
        if self.products not in HSIC_PRODUCTS:
            raise CompareError(f"hsic_products must be one of {HSIC_PRODUCTS}, not {self.products!r}")
        if passes < 1:
            raise CompareError(f"passes must be >= 1, got {passes}", params=("passes",))
        self.n_total = len(dataset) if st.num_examples is None else min(st.num_examples, len(dataset))
        min_batch = max([MIN_BATCH] + [m.smallest_batch() for m in st.measures])
        if batch_size is None:  # the CLI's plan: the paper's 256, or smaller for enough minibatches for the SE
            batch_size = choose_batch_plan(self.n_total, None, passes, min_batch).batch_size
        if batch_size < MIN_BATCH:
            raise CompareError(
                f"batch_size {batch_size} is too small: the unbiased HSIC estimator needs n > 3 examples per batch "
                "(use >= 64; the paper uses 256).",
                params=("batch_size",),
            )
        if self.n_total < MIN_BATCH:
            raise CompareError(f"{self.n_total} examples are too few for the unbiased estimator (need at least {MIN_BATCH})",
                               params=("num_examples",))
        self.models, self.dataset, self.remove_pc1 = list(models), dataset, st.remove_pc1
        self.batch_size, self.passes, self.seed = batch_size, passes, seed
        self.plan = minibatch_plan(self.n_total, batch_size, passes, seed, min_batch)
        self.measures = [m for m in st.measures if m.name != "cka"]  # linear CKA is always computed (its own fast path)
        if len({m.key for m in self.measures}) != len(self.measures):
            raise CompareError("a measure was given twice with the same parameters", params=("measures",))
        smallest = min(len(mb.indices) for mb in self.plan)
        for m in self.measures:
            try:
                m.check_batch(smallest)
            except MeasureError as e:
                if smallest == batch_size:
                    raise
                # a short last slice is merged into the one before (min_batch): only a pass of fewer examples is left
                raise MeasureError(f"{e} (the pass has only {self.n_total} examples: compare more examples)",
                                   params=e.params) from None
        self.row_stats = any(ROW_STATS in m.needs for m in self.measures)
        self.float64_grams = any(FLOAT64_GRAM in m.needs for m in self.measures)
        self.features = any(FEATURES in m.needs for m in self.measures)  # (n, p) per layer held until the batch's end
        self.warnings: list[str] = []
        self._context = None

    def __enter__(self) -> ComparisonPass:
        self._context = contextlib.ExitStack()
        try:
            self._context.enter_context(exact_float32())
            self._context.enter_context(on_device([m.model for m in self.models], self.dev))
            self.layouts = [self._layout(m.model) for m in self.models]
            for fmt in MEMORY_FORMATS:
                self._context.enter_context(memory_format([m.model for m, f in zip(self.models, self.layouts) if f == fmt],
                                                          MEMORY_FORMATS[fmt]))
            self._setup()
            # after the layers are found (fusion swaps modules): a module a hook taps is never replaced
            self.fusions = [self._context.enter_context(fused_inference(m.model, () if cap.native else cap.names))
                            if self.fuse_batchnorm else {"batchnorm_folded": 0, "relu_fused": 0}
                            for m, cap in zip(self.models, self.captures)]
        except BaseException:
            self._context.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._context.close()

    def _layout(self, model: nn.Module) -> str:
        """The memory format ``model`` runs in: as asked, or (``auto``) channels-last where the device runs convolutions
        faster so and the model has any."""
        if self.memory_format != "auto":
            return self.memory_format
        convolves = any(isinstance(m, nn.Conv2d) for m in model.modules())
        return "channels_last" if convolves and channels_last_helps(self.dev) else "contiguous"

    def _setup(self) -> None:
        dev, dataset = self.dev, self.dataset
        self.images_at = dataset.images.to(dev) if dataset.images.nbytes <= STAGE_BYTES else dataset.images
        self.captures, self.specs = [], []
        for m in self.models:
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
                self.warnings.append(
                    f"{m.ref}: its head has {num_classes} classes, {dataset.name} has {dataset.num_classes}; CKA does not "
                    "need the head, so its output layer is left out and hidden layers are compared."
                )
            spec = InputSpec.from_model(m.model, dataset.image_shape)
            if shift := unlike_training_data(m.ref, m.trained_on, dataset.name, spec, dataset.image_shape):
                self.warnings.append(shift)  # another dataset than its card's, or images resized / channel-converted
            self.captures.append(LayerCapture(m.model, m.layers, exclude=exclude, example=spec(self.images_at[:2].to(dev)),
                                              name=m.ref))
            self.specs.append(spec)
        self.sizes = [len(c.layers) for c in self.captures]
        self.offsets = [0, *np.cumsum(self.sizes).tolist()]
        self.pair_mask = None  # the layer pairs the other measures compute (None: every pair)
        if self.settings.measure_pairs == "across":
            model_of = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
            self.pair_mask = (model_of.unsqueeze(1) != model_of.unsqueeze(0)) | torch.eye(len(model_of), dtype=torch.bool)

    @property
    def layer_names(self) -> list[list[str]]:
        """Each model's captured layers, in forward order."""
        return [c.names for c in self.captures]

    def accumulators(self) -> tuple[MinibatchCKA, list[MinibatchCKA], dict]:
        """Empty accumulators for this pass: all layers of all models, (with ``remove_pc1``) one per model, and one
        per other measure (by key)."""
        return (MinibatchCKA(self.offsets[-1], products=self.products),
                [MinibatchCKA(s, products=self.products) for s in self.sizes] if self.remove_pc1 else [],
                {m.key: m.accumulator(self.offsets[-1]) for m in self.measures})

    @staticmethod
    def add(acc: tuple[MinibatchCKA, list[MinibatchCKA], dict], c: BatchContribution) -> None:
        acc[0].add(c.hsic, c.size)
        for a, h in zip(acc[1], c.pc_hsic):
            a.add(h, c.size)
        for key, a in acc[2].items():
            a.add(c.measures[key], c.size)

    def _non_finite(self, row: int, mb: Minibatch) -> None:
        offsets, captures = self.offsets, self.captures
        mi = int(np.searchsorted(offsets, row, side="right") - 1)
        raise CompareError(
            f"{self.models[mi].ref}: layer {captures[mi].names[row - offsets[mi]]} produced NaN/inf activations (or ones "
            f"whose products overflow float32) on pass {mb.pass_index + 1}, examples {mb.start}-{mb.stop - 1} of the "
            "shuffled order; check the model's weights and input preprocessing."
        )

    def contributions(self, indices: Sequence[int] | None = None,
                      on_batch: Callable[[int, int], None] | None = None) -> Iterator[BatchContribution]:
        """Run the plan's minibatches at ``indices`` (default: all), in that order, yielding what each adds.

        A minibatch's finiteness is checked as its Grams are made, or (accelerator pipeline) a batch late: a
        NaN raises before the generator is exhausted, so use its contributions only once it is."""
        dev, offsets, products, remove_pc1 = self.dev, self.offsets, self.products, self.remove_pc1
        at64 = float64_device(dev)  # where U-centring and HSIC run (the CPU for MPS, which has no float64)
        dense = self.pipeline == "accelerator"
        check_each = not dense or remove_pc1  # PC removal reads the Gram back anyway (eigh)
        late = LateCheck(dev, self._non_finite)
        todo = range(len(self.plan)) if indices is None else list(indices)
        for done, index in enumerate(todo, 1):
            mb = self.plan[index]
            images = self.images_at[mb.indices.to(self.images_at.device, non_blocking=True)].to(dev, non_blocking=True)
            n = len(mb.indices)
            u_all = torch.empty(offsets[-1], n, n, dtype=torch.float64, device=at64)
            inputs: list[LayerInputs] = [None] * offsets[-1] if self.measures else []  # type: ignore[list-item]
            pc_hsic = []
            for mi, (cap, spec, layout) in enumerate(zip(self.captures, self.specs, self.layouts)):
                pc_grams = []

                def sink(li: int, act: torch.Tensor, mi=mi, pc_grams=pc_grams, mb=mb) -> None:
                    # PC1 removal needs the centred Gram; HSIC alone does not (gram_dense is always centred)
                    k = gram_dense(act) if dense else gram(act, centred=remove_pc1)
                    if check_each and not torch.isfinite(k).all():  # NaN/inf in the activations reaches the Gram
                        self._non_finite(offsets[mi] + li, mb)
                    u_center(k, out=u_all[offsets[mi] + li])
                    if inputs:  # the other measures: the centred Gram in float64 (and per-example statistics)
                        g = gram(act, torch.float64).to(at64) if self.float64_grams else double_centre(k.to(at64))
                        inputs[offsets[mi] + li] = LayerInputs(g, example_stats(act) if self.row_stats else None,
                                                               centred_features(act, at64) if self.features else None)
                    if remove_pc1:
                        pc_grams.append(u_center(remove_top_pc(k.to(at64))))

                with torch.inference_mode():
                    cap.run(spec(images).contiguous(memory_format=MEMORY_FORMATS[layout]), sink)
                if remove_pc1:
                    pc_hsic.append(MinibatchCKA.contribution(torch.stack(pc_grams), products))
            if not check_each:
                late.push(torch.isfinite(u_all).flatten(1).all(1), mb)
            extra = {m.key: self._masked(m.contribution(inputs, self.pair_mask)) for m in self.measures}
            yield BatchContribution(index, n, MinibatchCKA.contribution(u_all, products), pc_hsic, extra)
            if on_batch:
                on_batch(done, len(todo))
        late.finish()

    def _masked(self, h: torch.Tensor) -> torch.Tensor:
        """A measure's contribution with every pair outside the pass's ``measure_pairs`` NaN (computed or not)."""
        return h if self.pair_mask is None else h.masked_fill(~self.pair_mask.to(h.device), float("nan"))

    def result(self, acc: tuple[MinibatchCKA, list[MinibatchCKA]], backend: dict) -> Comparison:
        """The comparison the accumulated contributions (every minibatch of the plan, in plan order) give;
        ``backend`` (where the minibatches ran) goes into the settings."""
        models, captures, offsets, dataset = self.models, self.captures, self.offsets, self.dataset
        if acc[0].num_batches != len(self.plan):
            raise CompareError(f"{acc[0].num_batches} of the plan's {len(self.plan)} minibatches were accumulated")
        est = acc[0].compute()
        pc_est = [a.compute() for a in acc[1]]
        warnings = list(self.warnings)
        for i in est.undefined:
            mi = int(np.searchsorted(offsets, i, side="right") - 1)
            warnings.append(
                f"{models[mi].ref}: layer {captures[mi].names[i - offsets[mi]]} is constant on every example compared; "
                "its CKA is undefined (shown as NaN, never clamped)."
            )
        settings = {
            "dataset": dataset.describe(),
            "num_examples": self.n_total,
            "batch_size": self.batch_size,
            "passes": self.passes,
            "seed": self.seed,
            "num_batches": est.num_batches,
            "estimator": "linear CKA, unbiased HSIC_1 per minibatch, batch-size-weighted sums, float64 accumulation",
            "standard_error": "leave-one-minibatch-out jackknife",
            "device": describe_device(self.dev),
            "backend": backend,
            "arithmetic": {
                "pipeline": self.pipeline,
                "forward_and_grams": "float32, TF32 off",
                "u_centring": "float64",
                "hsic_products": "float64" if self.products == "float64" else "float32 over runs of Gram rows, partial sums in float64",
                "sums_over_batches": "float64",
            },
            "forward": {
                "autograd": "off (torch.inference_mode)",
                "channels_last": "channels_last" in self.layouts,
                "memory_format": {m.ref: layout for m, layout in zip(models, self.layouts)},
                "batchnorm_fused": {m.ref: record for m, record in zip(models, self.fusions)},
                "gram_products": ("oneDNN float32 matmul" if self.pipeline == "cpu" and self.dev.type == "cpu"
                                  and onednn_products() else "BLAS float32 matmul"),
                "taps": "Grams read each activation in its memory order (no copy back to NCHW)",
            },
            "inputs": {m.ref: spec.describe(dataset.image_shape) for m, spec in zip(models, self.specs)},
            "layers": {m.ref: cap.names for m, cap in zip(models, captures)},
            "package_versions": package_versions(),
        }
        cka = LinearCKA()
        estimates = {cka.key: MeasureEstimate(est.value, est.se, est.num_batches, est.num_examples, list(est.undefined))}
        specs = {cka.key: cka}
        for m in self.measures:
            estimates[m.key], specs[m.key] = m.estimate(acc[2][m.key]), m
            for i in estimates[m.key].undefined:
                if i not in est.undefined:  # CKA's own warning covers a constant layer
                    mi = int(np.searchsorted(offsets, i, side="right") - 1)
                    warnings.append(f"{models[mi].ref}: layer {captures[mi].names[i - offsets[mi]]}: {m.name} is "
                                    "undefined on it (shown as NaN).")
        settings["measures"] = [m.describe() for m in specs.values()]
        if self.measures:
            settings["measure_pairs"] = self.settings.measure_pairs
        comp = Comparison(list(models), captures, offsets, est.value.numpy(), est.se.numpy(), settings, warnings, [],
                          estimates, specs)
        for mi in range(len(models)):
            if self.remove_pc1:
                pe = pc_est[mi]
                r = comp.pair(mi, mi)
                r.value, r.se, r.kind = pe.value.numpy(), pe.se.numpy(), "within-pc1-removed"
                comp.pc1_removed.append(r)
            else:
                comp.pc1_removed.append(None)
        return comp
