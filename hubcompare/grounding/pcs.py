"""Principal-component removal (Ding et al. 2021): delete principal components of a layer and see whether a measure
changes in step with what the layer can still tell apart.

For each probed layer of one model: its features X on the grounding examples (centred over them) and, at each step,
the features with some principal components removed, ``X - U_S U_S^T X`` (U: the left singular vectors, S the
removed ones). Two ladders: the **top** k components, k = 0, 1, ..., K; and the **low-variance** end, keeping only
the top r / 2^j of the layer's r components, j = 0, 1, ... (Ding et al.'s deletion from the bottom, which a measure
dominated by the top components barely sees although the probe's accuracy falls). At each step, every measure
between X and the reduced features (the full-data value: one batch holding every example) and a linear probe's test
accuracy on them. The probe is a ridge classifier in closed form (least squares on one-hot
labels, the ridge 1e-3 of the mean squared feature norm), fitted on a seeded half of the examples and scored on the
other half: no hyperparameter search, the same probe at every k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.datasets import ImageDataset
from ..models.inputs import InputSpec
from ..similarity.capture import LayerCapture
from ..similarity.cka import flat_features
from ..similarity.engine import CompareModel
from ..similarity.measures import LayerInputs, Measure
from ..similarity.measures.base import FEATURES, ROW_STATS, centred_features, double_centre, example_stats

__all__ = ["PCRemoval", "keep_components", "layer_features", "measure_between", "probe_accuracy", "rank_of",
           "remove_components", "pc_removal"]

RIDGE = 1e-3  # of the mean squared feature norm of the fitted examples


@dataclass
class PCRemoval:
    """One probed layer and one ladder (``end``: ``top`` or ``low``): ``removed[i]`` components removed at step i and
    ``kept[i]`` left (of the layer's rank), ``accuracy[i]`` (the probe's test accuracy on the features without them) and ``values[measure key][i]`` (the
    measure between the layer and those features)."""

    layer: str
    end: str
    removed: list[int]
    kept: list[int]
    accuracy: list[float]
    values: dict[str, list[float]]

    def to_json(self) -> dict:
        return {"layer": self.layer, "end": self.end, "removed": self.removed, "kept": self.kept, "accuracy": self.accuracy,
                "values": {k: [v if np.isfinite(v) else None for v in vals] for k, vals in self.values.items()}}


def layer_features(model: CompareModel, dataset: ImageDataset, layers: Sequence[str], num_examples: int,
                   device: torch.device, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """``layers`` of ``model`` on the first ``num_examples`` examples, each (n, features) float64 on the CPU."""
    spec = InputSpec.from_model(model.model, dataset.image_shape)
    images = dataset.images[:num_examples]
    capture = LayerCapture(model.model, list(layers), example=spec(images[:2].to(device)), name=model.ref)
    parts: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(capture.layers))}

    def sink(index: int, act: torch.Tensor) -> None:
        parts[index].append(flat_features(act).to("cpu", torch.float64))

    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            capture.run(spec(images[start : start + batch_size].to(device)), sink)
    return {name: torch.cat(parts[i]) for i, name in enumerate(capture.names)}


def remove_components(xc: torch.Tensor, u: torch.Tensor, k: int) -> torch.Tensor:
    """Centred features ``xc`` (n, p) without their top ``k`` principal components (``u``: the left singular vectors
    of ``xc``, largest first)."""
    return xc - u[:, :k] @ (u[:, :k].T @ xc) if k else xc


def keep_components(xc: torch.Tensor, u: torch.Tensor, k: int) -> torch.Tensor:
    """Centred features ``xc`` (n, p) reduced to their top ``k`` principal components (the rest, the low-variance
    end, removed)."""
    return u[:, :k] @ (u[:, :k].T @ xc)


def rank_of(s: torch.Tensor) -> int:
    """The numerical rank from singular values (largest first): those above n eps of the largest."""
    return int((s > s[0] * len(s) * torch.finfo(s.dtype).eps).sum()) if len(s) and s[0] > 0 else 0


def _inputs(x: torch.Tensor, row_stats: bool, features: bool) -> LayerInputs:
    return LayerInputs(double_centre(x @ x.T), example_stats(x) if row_stats else None,
                       centred_features(x) if features else None)


def measure_between(measures: Sequence[Measure], x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Every measure's full-data value between features ``x`` and ``y`` (n, p) of the same examples (one batch; an
    asymmetric measure's two directions averaged, as the other tests average them)."""
    row_stats = any(ROW_STATS in m.needs for m in measures)
    features = any(FEATURES in m.needs for m in measures)
    layers = [_inputs(x, row_stats, features), _inputs(y, row_stats, features)]
    out = {}
    for m in measures:
        acc = m.accumulator(2)
        acc.add(m.contribution(layers), x.shape[0])
        value = m.estimate(acc).value
        out[m.key] = float(value[0, 1] if m.symmetric else (value[0, 1] + value[1, 0]) / 2)  # both directions
    return out


def probe_accuracy(x: torch.Tensor, labels: torch.Tensor, fit: torch.Tensor, test: torch.Tensor,
                   num_classes: int) -> float:
    """Test accuracy of a ridge classifier (one-hot least squares, with intercept) fitted on ``fit`` and scored on
    ``test`` (index tensors), computed through the fitted examples' Gram (n << p)."""
    xf, xt = x[fit], x[test]
    mean = xf.mean(0, keepdim=True)
    xf, xt = xf - mean, xt - mean
    y = torch.nn.functional.one_hot(labels[fit], num_classes).to(torch.float64)
    ymean = y.mean(0, keepdim=True)
    k = xf @ xf.T
    ridge = RIDGE * max(float(k.diagonal().mean()), torch.finfo(torch.float64).tiny)
    alpha = torch.linalg.solve(k + ridge * torch.eye(len(fit), dtype=torch.float64), y - ymean)
    scores = (xt @ xf.T) @ alpha + ymean
    return float((scores.argmax(1) == labels[test]).double().mean())


def pc_removal(features: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int, measures: Sequence[Measure],
               steps: int, seed: int = 0, on_step: Callable[[int, int], None] | None = None) -> list[PCRemoval]:
    """:class:`PCRemoval` of each layer in ``features``, both ladders (module doc): the top k = 0..``steps``
    components removed, then the low-variance end (top r / 2^j kept, j = 0.. up to ``steps`` and one component)."""
    n = len(labels)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    fit, test = order[: n // 2], order[n // 2 :]
    layers = {}
    for name, x in features.items():
        x0 = x - x.mean(0, keepdim=True)
        u, s, _ = torch.linalg.svd(x0, full_matrices=False)
        r = rank_of(s)
        kept = list(dict.fromkeys(max(1, r >> j) for j in range(steps + 1))) if r else [0]
        layers[name] = x0, u, r, {"top": [(k, k) for k in range(min(steps, r) + 1)], "low": [(r - m, m) for m in kept]}
    done, total = 0, sum(len(ladder) for *_, ladders in layers.values() for ladder in ladders.values())
    out = []
    for name, (x0, u, r, ladders) in layers.items():
        for end, ladder in ladders.items():
            removed, kept, accuracy, values = [], [], [], {m.key: [] for m in measures}
            for k, arg in ladder:  # made one at a time: a CIFAR layer's reduced copy is n x 16,384 floats
                xk = remove_components(x0, u, arg) if end == "top" else keep_components(x0, u, arg)
                removed.append(k)
                kept.append(r - k)
                accuracy.append(probe_accuracy(xk, labels, fit, test, num_classes))
                for key, v in measure_between(measures, x0, xk).items():
                    values[key].append(v)
                done += 1
                if on_step:
                    on_step(done, total)
            out.append(PCRemoval(name, end, removed, kept, accuracy, values))
    return out
