"""The probes' features: each tapped layer's activations, optionally 2x2 max-pooled, flattened, frozen.

Features are streamed layer group by layer group: the layers are split, in forward order, into groups
whose training and test features fit ``max_feature_bytes``; each group is one pass over the data
(stopping after its last layer) that fills one float32 (examples x features) matrix per layer, fitted and
dropped before the next group. A whole network's features are never held at once, and a group never
runs the model past its last layer. Everything runs under ``torch.no_grad``: no gradient reaches the model.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..data.datasets import ImageDataset
from ..errors import ProbeError
from ..models.inputs import InputSpec
from ..similarity.capture import LayerCapture
from ..similarity.engine import CompareModel

__all__ = ["ProbeLayer", "pool_features", "probe_layer_info", "layer_groups", "extract_features", "DEFAULT_PROBE_LAYERS"]

# for hubcompare's CIFAR ResNets: the stem, every block's residual branch (before the add) and output (after it),
# and the pooled features the model's own linear head sees
DEFAULT_PROBE_LAYERS = ("stem", "*.branch", "*.out", "pool")


@dataclass(frozen=True)
class ProbeLayer:
    name: str
    stage: int | None
    kind: str  # "stem", "branch" (before the add), "out" (after the add), "pool", or "module"/"feature"/"logits"
    shape: tuple[int, ...]  # per example, as tapped
    probed_shape: tuple[int, ...]  # per example, after pooling
    features: int


def pool_features(act: torch.Tensor, pool: bool) -> torch.Tensor:
    """(B, ...) activations -> (B, features) float32: feature maps (B, C, H, W) 2x2 max-pooled first when
    ``pool`` and both sides are at least 2 (an odd last row or column is dropped, as the paper's pooling does)."""
    if pool and act.ndim == 4 and min(act.shape[-2:]) >= 2:
        act = F.max_pool2d(act, 2)
    return act.reshape(act.shape[0], -1).float()


def probe_layer_info(capture: LayerCapture, example: torch.Tensor, pool: bool) -> list[ProbeLayer]:
    """Each captured layer's shape before and after pooling, from one forward pass on ``example``."""
    shapes: dict[int, tuple] = {}
    pooled: dict[int, tuple] = {}

    def sink(i: int, a: torch.Tensor) -> None:
        shapes[i] = tuple(a.shape[1:])
        pooled[i] = tuple((F.max_pool2d(a.float(), 2) if pool and a.ndim == 4 and min(a.shape[-2:]) >= 2 else a).shape[1:])

    capture.run(example, sink)
    out = []
    for i, layer in enumerate(capture.layers):
        if i not in shapes:
            raise ProbeError(f"layer {layer.name} produced no tensor in a forward pass: leave it out of the layers",
                             params=("layers",))
        n = 1
        for d in pooled[i]:
            n *= d
        out.append(ProbeLayer(layer.name, layer.stage, layer.kind, shapes[i], pooled[i], n))
    return out


def layer_groups(layers: Sequence[ProbeLayer], num_examples: int, max_feature_bytes: int) -> list[list[int]]:
    """Consecutive layer indices whose float32 features for ``num_examples`` examples fit ``max_feature_bytes``."""
    groups: list[list[int]] = []
    used = 0
    for i, layer in enumerate(layers):
        need = 4 * num_examples * layer.features
        if need > max_feature_bytes:
            raise ProbeError(
                f"layer {layer.name} has {layer.features:,} features: its {num_examples:,} training and test examples "
                f"need {need / 2**30:.2f} GiB, over the {max_feature_bytes / 2**30:.2f} GiB allowed. Max-pool feature "
                "maps 2x2 (pool), probe fewer training examples (train_examples) or allow more memory (max_feature_bytes).",
                params=("pool", "train_examples", "max_feature_bytes"))
        if groups and used + need <= max_feature_bytes:
            groups[-1].append(i)
            used += need
        else:
            groups.append([i])
            used = need
    return groups


@torch.no_grad()
def extract_features(model: CompareModel, layers: Sequence[ProbeLayer], datasets: Sequence[ImageDataset], pool: bool,
                     batch_size: int, device: torch.device,
                     on_batch: Callable[[], None] | None = None) -> list[list[torch.Tensor]]:
    """For each dataset, one (examples x features) float32 matrix per layer, on ``device``, in dataset order.

    The model runs only up to the last of ``layers``; ``on_batch()`` after each minibatch."""
    spec = InputSpec.from_model(model.model, datasets[0].image_shape)
    example = spec(datasets[0].images[:2].to(device))
    capture = LayerCapture(model.model, [glob.escape(layer.name) for layer in layers], example=example)
    index = {name: i for i, name in enumerate(layer.name for layer in layers)}
    order = [index[n] for n in capture.names]  # the capture's forward order -> the order asked for
    out = []
    for ds in datasets:
        feats = [torch.empty(len(ds), layer.features, dtype=torch.float32, device=device) for layer in layers]
        for lo in range(0, len(ds), batch_size):
            hi = min(len(ds), lo + batch_size)

            def sink(i: int, act: torch.Tensor, lo=lo, hi=hi) -> None:
                feats[order[i]][lo:hi] = pool_features(act.detach(), pool)

            capture.run(spec(ds.images[lo:hi].to(device)), sink)
            if on_batch:
                on_batch()
        out.append(feats)
    return out
