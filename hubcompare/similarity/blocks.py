"""Block structure: first-principal-component analysis per layer and a deterministic block detector.

The paper's "block structure" is a contiguous range of layers with near-identical
representations, in which one principal component dominates. CKA alone is a fragile signal
(stage-aligned squares from the residual paths reach CKA > 0.95 in models without a block),
so the detector requires all of:

1. **PC1 dominance**: a run of consecutive layers whose fraction of variance on the first
   principal component is at least ``pc1_threshold``, allowing up to ``max_gap``
   layers below it inside the run (the residual checkerboard: the first, downsampling
   block of a stage dips for one or two layers); the run starts and ends on a dominant layer;
2. **size and similarity**: the run has at least ``min_size`` layers and the mean
   off-diagonal CKA inside its square is at least ``cka_threshold``;
3. **strong dominance over the run**: the mean PC1 fraction over the whole run (gap layers
   included) is at least ``min_mean_pc1``.

The defaults (:class:`BlockCriteria`) were set on 49 digits ResNet-56 maps (widths 1 and 2,
17 training settings) labelled by eye, 12 of them with a visible block; they classify all 49 as
labelled. Runs in
maps a person calls a block had mean PC1 0.66-0.80; the bright stage-aligned squares of the
residual paths that pass (1) and (2) in no-block maps had 0.50-0.61. The mean CKA inside with
each layer's PC1 removed is reported (``mean_cka_pc1_removed``) but not used: the paper shows
blocks fading once PC1 is removed, yet in 3 of those 12 blocks the similarity left after
removal was as high as before (the remaining components are shared across the block too).

Each block is reported with its mean CKA inside (with and without PC1), mean CKA to the layers
outside, contrast (inside - outside) and mean PC1 fraction. The same inputs always give the same
blocks.
PC1 fractions are exact on a fixed sample (the first ``pc_examples`` examples in dataset order):
``s1^2 / ||X_c||_F^2`` from the eigenvalues of the centred Gram matrix, which equal the
squared singular values of the centred activations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.datasets import ImageDataset
from ..errors import CompareError
from ..models.devices import exact_float32, float64_device, on_device, resolve_device
from ..models.inputs import InputSpec
from .capture import LayerCapture
from .cka import gram
from .engine import CompareModel, Comparison, compare
from .results import CKAResult

__all__ = ["Block", "BlockCriteria", "PCAnalysis", "BlockReport", "detect_blocks", "pc_analysis", "analyze_blocks",
           "DEFAULT_BLOCK_LAYERS"]

DEFAULT_BLOCK_LAYERS = ("stem", "*.out")  # for hubcompare ResNets: stem + every block output


@dataclass(frozen=True)
class BlockCriteria:
    """What the detector calls a block (see the module docstring); the defaults are the calibrated ones."""

    pc1_threshold: float = 0.5  # a layer is PC1-dominated at or above this share of variance
    cka_threshold: float = 0.8  # minimum mean CKA inside a block
    min_size: int = 4  # minimum layers in a block
    max_gap: int = 2  # non-dominated layers tolerated inside a block (the residual checkerboard)
    min_mean_pc1: float = 0.63  # minimum mean PC1 share over a block's layers

    def override(self, **changes) -> BlockCriteria:
        """These criteria with some changed; ``None`` values keep the current ones."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> str:
        return (f"PC1 >= {self.pc1_threshold}, mean >= {self.min_mean_pc1}; CKA >= {self.cka_threshold}; "
                f">= {self.min_size} layers, gaps <= {self.max_gap}")


@dataclass
class Block:
    start: int
    stop: int  # inclusive
    layers: list[str]
    mean_cka: float
    outside_cka: float
    contrast: float
    mean_pc1: float
    mean_cka_pc1_removed: float | None = None

    @property
    def size(self) -> int:
        return self.stop - self.start + 1


@dataclass
class PCAnalysis:
    layers: list[str]
    fraction: np.ndarray  # (L,) share of variance on PC1; NaN for a layer constant on every example
    cosine: np.ndarray  # (L, L) |cos| between layers' first PCs (example-space score vectors)
    num_examples: int

    @property
    def constant_layers(self) -> list[str]:
        """Layers whose output is the same for every example (no variance: PC1 share undefined)."""
        return [name for name, f in zip(self.layers, self.fraction) if np.isnan(f)]

    def fraction_summary(self) -> dict | None:
        """Largest PC1 share (and its layer) and the median over layers with variance; None if none has any."""
        fr = self.fraction
        if np.isnan(fr).all():
            return None
        top = int(np.nanargmax(fr))
        return {"max": float(fr[top]), "max_layer": self.layers[top], "median": float(np.nanmedian(fr))}


@dataclass
class BlockReport:
    ref: str
    blocks: list[Block]
    cka: CKAResult
    cka_pc1_removed: CKAResult
    pcs: PCAnalysis
    params: dict = field(default_factory=dict)

    @property
    def criteria(self) -> BlockCriteria:
        return BlockCriteria(**{k: self.params[k] for k in BlockCriteria.__dataclass_fields__ if k in self.params})

    def to_json(self) -> dict:
        return {
            "ref": self.ref,
            "params": self.params,
            "blocks": [asdict(b) | {"size": b.size} for b in self.blocks],
            "layers": self.pcs.layers,
            "pc1_fraction": self.pcs.fraction.tolist(),
            "pc1_summary": self.pcs.fraction_summary(),
            "constant_layers": self.pcs.constant_layers,
            "pc1_cosine": self.pcs.cosine.tolist(),
            "pc_examples": self.pcs.num_examples,
            "cka": self.cka.to_json(),
            "cka_pc1_removed": self.cka_pc1_removed.to_json(),
        }


def detect_blocks(
    cka: np.ndarray,
    pc1_fraction: np.ndarray,
    layers: Sequence[str] | None = None,
    criteria: BlockCriteria = BlockCriteria(),
    cka_pc1_removed: np.ndarray | None = None,
    **changes,
) -> list[Block]:
    """Blocks of a within-model CKA matrix (L, L) given per-layer PC1 fractions (L,). See module doc.

    ``changes``: criteria to change for this call (``max_gap=0``, ...), as :meth:`BlockCriteria.override`.
    """
    c = criteria.override(**changes)
    pc1_threshold, cka_threshold, min_size, max_gap, min_mean_pc1 = (
        c.pc1_threshold, c.cka_threshold, c.min_size, c.max_gap, c.min_mean_pc1)
    cka, frac = np.asarray(cka, dtype=float), np.asarray(pc1_fraction, dtype=float)
    n = len(frac)
    layers = list(layers) if layers is not None else [str(i) for i in range(n)]
    runs: list[list[int]] = []
    for idx in np.flatnonzero(np.nan_to_num(frac, nan=0.0) >= pc1_threshold):
        if runs and idx - runs[-1][1] - 1 <= max_gap:  # bridge a gap of at most max_gap layers
            runs[-1][1] = int(idx)
        else:
            runs.append([int(idx), int(idx)])
    blocks = []
    for start, end in runs:
        size = end - start + 1
        if size < min_size:
            continue
        inside = cka[start : end + 1, start : end + 1]
        off = inside[~np.eye(size, dtype=bool)]
        mean_in = float(np.nanmean(off))
        mean_pc1 = float(np.nanmean(frac[start : end + 1]))
        if not (mean_in >= cka_threshold and mean_pc1 >= min_mean_pc1):
            continue
        mean_removed = None
        if cka_pc1_removed is not None:
            removed = np.asarray(cka_pc1_removed, dtype=float)[start : end + 1, start : end + 1]
            mean_removed = float(np.nanmean(removed[~np.eye(size, dtype=bool)]))
        mask = np.ones(n, dtype=bool)
        mask[start : end + 1] = False
        outside = cka[start : end + 1][:, mask]
        mean_out = float(np.nanmean(outside)) if outside.size else float("nan")
        blocks.append(Block(start, end, layers[start : end + 1], mean_in, mean_out, mean_in - mean_out,
                            mean_pc1, mean_removed))
    return blocks


@torch.no_grad()
def pc_analysis(model: CompareModel, dataset: ImageDataset, num_examples: int = 1024, chunk: int = 256,
                device: str | torch.device = "cpu") -> PCAnalysis:
    """Exact PC1 variance fraction per layer and |cosine| between layers' first PCs on a fixed sample
    (the model runs on ``device``, in full float32; the eigendecompositions are float64)."""
    if num_examples < 2 or chunk < 1:
        raise CompareError(f"the PC analysis needs a sample of at least 2 examples (got {num_examples}) and a positive "
                           f"chunk (got {chunk})", params=("pc_examples",))
    dev = resolve_device(device)
    with exact_float32(), on_device([model.model], dev):
        spec = InputSpec.from_model(model.model, dataset.image_shape)
        cap = LayerCapture(model.model, model.layers, example=spec(dataset.images[:2].to(dev)), name=model.ref)
        n = min(num_examples, len(dataset))
        # the n x n Gram of the centred sample needs all n rows of a layer at once: collect flattened
        # activations layer by layer across chunks in float32, then reduce and drop them
        feats: list[list[torch.Tensor]] = [[] for _ in cap.layers]
        for lo in range(0, n, chunk):
            cap.run(spec(dataset.images[lo : min(n, lo + chunk)].to(dev)),
                    lambda i, a: feats[i].append(a.reshape(a.shape[0], -1).float()))
        fraction = np.zeros(len(cap.layers))
        pcs = np.zeros((len(cap.layers), n))
        for i in range(len(cap.layers)):
            k = gram(torch.cat(feats[i]), torch.float32).to(float64_device(dev), torch.float64)
            feats[i] = []
            evals, evecs = torch.linalg.eigh(k)
            total = float(torch.trace(k))
            fraction[i] = float(evals[-1]) / total if total > 0 else float("nan")
            pcs[i] = evecs[:, -1].cpu().numpy()
    cosine = np.abs(pcs @ pcs.T)
    return PCAnalysis(cap.names, fraction, cosine, n)


def analyze_blocks(
    model: CompareModel,
    dataset: ImageDataset,
    batch_size: int | None = None,
    passes: int = 1,
    seed: int = 0,
    num_examples: int | None = None,
    pc_examples: int = 1024,
    criteria: BlockCriteria = BlockCriteria(),
    on_batch=None,
    device: str | torch.device = "cpu",
    compare_fn: Callable[..., Comparison] = compare,
) -> BlockReport:
    """Within-model CKA (with and without PC1), PC analysis and detected blocks for one model, run on ``device``.

    ``compare_fn``: what computes the CKA (:func:`~.engine.compare`'s arguments and result), e.g. a
    :class:`~.distributed.RayShards`' ``compare`` to shard it over workers; the PC analysis runs here."""
    if model.layers is None and hasattr(model.model, "forward_taps"):
        model = CompareModel(model.ref, model.model, model.provenance, list(DEFAULT_BLOCK_LAYERS))
    comp = compare_fn([model], dataset, batch_size=batch_size, passes=passes, seed=seed, num_examples=num_examples,
                      remove_pc1=True, on_batch=on_batch, device=device)
    cka = comp.pair(0, 0)
    pcs = pc_analysis(model, dataset, pc_examples, device=device)
    params = asdict(criteria) | {"pc_examples": pcs.num_examples}
    removed = comp.pc1_removed[0]
    blocks = detect_blocks(cka.value, pcs.fraction, cka.layers_a, criteria, removed.value)
    cka.provenance["block_detection"] = params
    return BlockReport(model.ref, blocks, cka, removed, pcs, params)
