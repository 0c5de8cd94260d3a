"""Linear probes: softmax regression on every tapped layer's frozen features (the paper's Section 5).

For each layer a multinomial logistic regression (a bias, weights on the layer's standardised features,
an L2 penalty on the weights) is fit by L-BFGS on the full batch of training features, held on the
device. The penalty is chosen on a held-out, class-stratified validation part of the training split
(``validation_fraction``, drawn with ``seed``): each value of ``l2_grid`` is fit on the rest, strongest
first, each warm-started from the one before; the best validation accuracy wins (ties: the lower
validation loss). The chosen penalty is then refit on the whole training split, and only that probe sees
the test split. The test split never chooses anything.

Why L-BFGS on the full batch: it converges to the optimum of a convex problem (same data and settings, same
probe; it matches scikit-learn's LogisticRegression to 2e-3 in probability), needs no learning rate, and
each iteration is two (examples x features x classes) products, as one epoch of minibatch SGD is, while
SGD needs tens of epochs and a tuned step. Measured (one thread, CPU time): 1,167 x 1,024 features, ~10 ms
an iteration, 5-90 iterations a fit; 10,000 x 4,096, 0.33 s an iteration (so ~1.6 s for a CIFAR-10 layer
of 50,000 x 4,096), 11-16 iterations from zero. Features are streamed layer group by layer group
(:mod:`.features`), so memory is bounded by ``max_feature_bytes``, not by the network's size.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..data.datasets import ImageDataset
from ..errors import ProbeError
from ..models.devices import describe_device, exact_float32, on_device, resolve_device
from ..models.inputs import InputSpec
from ..provenance import package_versions
from ..similarity.capture import LayerCapture
from ..similarity.engine import CompareModel
from .deletion import model_accuracy, rows_to_csv
from .features import DEFAULT_PROBE_LAYERS, extract_features, layer_groups, probe_layer_info

__all__ = ["DEFAULT_L2_GRID", "ProbeResult", "Probe", "fit_softmax", "validation_split", "probe_layers"]

DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # on standardised features, with the mean cross-entropy
FIT_METHOD = ("softmax regression (multinomial logistic, bias unpenalised, L2 on the weights) on features standardised "
              "with the fitting examples' mean and std; L-BFGS (strong Wolfe line search) on the full batch; the L2 grid "
              "fit strongest first, each warm-started from the previous; the chosen L2 refit on the whole training split")


@dataclass
class Probe:
    """A fitted probe: logits = ((x - mean) * scale) @ weight + bias."""

    weight: torch.Tensor  # (features, classes)
    bias: torch.Tensor  # (classes,)
    mean: torch.Tensor
    scale: torch.Tensor
    iterations: int

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(x, self.weight, self.bias, self.mean, self.scale)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return float((self.logits(x).argmax(1) == y).float().mean()) if len(y) else math.nan

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(self.logits(x), y))


def _logits(x, w, b, mean, scale):
    # the standardisation folded into the weights: no standardised copy of x is made
    ws = w * scale[:, None]
    return x @ ws + (b - mean @ ws)


def fit_softmax(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, init: Probe | None = None,
                max_iter: int = 200, tolerance: float = 1e-5) -> Probe:
    """Softmax regression on ``x`` (n, features) float32, labels ``y``: minimises the mean cross-entropy +
    ``l2``/2 ||W||^2 over standardised features by full-batch L-BFGS (warm-started from ``init``'s weights)."""
    mean = x.mean(0)
    std = x.std(0) if len(x) > 1 else torch.zeros_like(mean)
    scale = torch.where(std > 1e-6 * (std.max() if std.numel() else 1) + 1e-12, 1.0 / std, torch.zeros_like(std))
    w = (init.weight.clone() if init is not None else torch.zeros(x.shape[1], num_classes, device=x.device)).requires_grad_()
    b = (init.bias.clone() if init is not None else torch.zeros(num_classes, device=x.device)).requires_grad_()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=tolerance, tolerance_change=1e-9,
                            history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(_logits(x, w, b, mean, scale), y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Probe(w.detach(), b.detach(), mean, scale, int(opt.state[w].get("n_iter", 0)))


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, validation) indices into ``labels``: a seeded draw of ``fraction`` of each class (at least one of
    any class with two or more examples) for validation, in dataset order within each part."""
    g = torch.Generator().manual_seed(seed)
    val = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        k = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        val.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val_idx = torch.sort(torch.cat(val)).values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val_idx] = False
    return torch.nonzero(mask).flatten(), val_idx


@dataclass
class ProbeResult:
    """Per layer (forward order): test accuracy of its probe, what chose its L2, its shapes and kind."""

    ref: str
    layers: list[dict]
    boundaries: list[int]  # indices into ``layers`` where a new stage begins
    model_test_accuracy: float | None  # the model's own head on the same test examples (None: head does not fit)
    provenance: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    blocks: list[dict] = field(default_factory=list)  # detected blocks ({"layers": [...], ...}) for shading, if given

    @property
    def names(self) -> list[str]:
        return [r["name"] for r in self.layers]

    @property
    def test_accuracy(self) -> list[float]:
        return [r["test_accuracy"] for r in self.layers]

    def layer(self, name: str) -> dict:
        return next(r for r in self.layers if r["name"] == name)

    def rows(self) -> list[dict]:
        keys = ("index", "name", "stage", "kind", "features", "chosen_l2", "validation_accuracy", "train_accuracy",
                "test_accuracy")
        return [{k: r[k] for k in keys} for r in self.layers]

    def to_csv(self) -> str:
        return rows_to_csv(self.rows())

    def to_json(self) -> dict:
        return {"kind": "linear-probes", "ref": self.ref, "model": self.provenance,
                "model_test_accuracy": self.model_test_accuracy, "layers": self.layers, "stage_boundaries": self.boundaries,
                "detected_blocks": self.blocks, "settings": self.settings}


def _check(l2_grid, validation_fraction, batch_size, train_examples, test_examples, max_iter, max_feature_bytes) -> None:
    if not l2_grid or any(not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0) for v in l2_grid):
        raise ProbeError(f"l2_grid must be positive finite numbers, got {list(l2_grid)}", params=("l2_grid",))
    if not (isinstance(validation_fraction, (int, float)) and 0 < validation_fraction < 1):
        raise ProbeError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}", params=("validation_fraction",))
    for name, v in (("batch_size", batch_size), ("max_iter", max_iter), ("max_feature_bytes", max_feature_bytes),
                    ("train_examples", train_examples), ("num_examples", test_examples)):
        if v is not None and v < 1:
            raise ProbeError(f"{name} must be >= 1, got {v}", params=(name,))


def probe_layers(
    model: CompareModel,
    train: ImageDataset,
    test: ImageDataset,
    pool: bool = False,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    validation_fraction: float = 0.1,
    seed: int = 0,
    batch_size: int = 256,
    train_examples: int | None = None,
    test_examples: int | None = None,
    max_iter: int = 200,
    max_feature_bytes: int = 2 << 30,
    on_step: Callable[[int, int], None] | None = None,
    device: str | torch.device = "cpu",
) -> ProbeResult:
    """A linear probe on each of ``model``'s layers (its ``layers`` patterns; for hubcompare's ResNets by default
    the stem, every residual branch before its add, every block output after it, and the pooled features),
    fit on ``train``, chosen on a validation part of it, reported on ``test`` (see the module doc).

    ``pool``: 2x2 max-pool feature maps first. ``train_examples``: a seeded class-stratified subset of ``train``;
    ``test_examples``: the first N of ``test``. ``on_step(done, total)``: after each minibatch and each layer's fit.
    """
    _check(l2_grid, validation_fraction, batch_size, train_examples, test_examples, max_iter, max_feature_bytes)
    if train.num_classes != test.num_classes:
        raise ProbeError(f"train ({train.num_classes} classes) and test ({test.num_classes}) are not the same task",
                         params=("dataset",))
    started = time.perf_counter()
    dev = resolve_device(device)
    if train_examples is not None and train_examples < len(train):
        keep, _ = validation_split(train.labels, 1 - train_examples / len(train), seed + 1)
        train = train.subset(keep, tag=f"{len(keep)} examples, seed {seed + 1}")
    fit_idx, val_idx = validation_split(train.labels, validation_fraction, seed)
    if len(fit_idx) < 2 or len(val_idx) < 1:
        raise ProbeError(f"{len(train)} training examples are too few to hold out a validation part", params=("train_examples",))
    ordered = train.subset(torch.cat([fit_idx, val_idx]), tag="probe fit part then validation part")
    n_fit = len(fit_idx)
    if test_examples is not None and test_examples < len(test):
        test = test.subset(torch.arange(test_examples), tag=f"first {test_examples}")
    patterns = model.layers
    if patterns is None and hasattr(model.model, "forward_taps"):
        patterns = list(DEFAULT_PROBE_LAYERS)
    y_train, y_test = ordered.labels.to(dev), test.labels.to(dev)
    grid = sorted({float(v) for v in l2_grid}, reverse=True)
    rows: list[dict] = []
    with exact_float32(), on_device([model.model], dev):
        spec = InputSpec.from_model(model.model, train.image_shape)
        example = spec(train.images[:2].to(dev))
        capture = LayerCapture(model.model, patterns, example=example, name=model.ref)
        info = probe_layer_info(capture, example, pool)
        groups = layer_groups(info, len(ordered) + len(test), max_feature_bytes)
        per_pass = math.ceil(len(ordered) / batch_size) + math.ceil(len(test) / batch_size)
        total, done = per_pass * len(groups) + len(info), 0

        def step() -> None:
            nonlocal done
            done += 1
            if on_step:
                on_step(done, total)

        extract_s = fit_s = 0.0
        for group in groups:
            t0 = time.perf_counter()
            tr, te = extract_features(model, [info[i] for i in group], [ordered, test], pool, batch_size, dev, on_batch=step)
            extract_s += time.perf_counter() - t0
            for k, i in enumerate(group):
                t0 = time.perf_counter()
                rows.append(_fit_layer(i, info[i], tr[k], te[k], y_train, y_test, n_fit, train.num_classes, grid, max_iter))
                tr[k] = te[k] = None  # free this layer's features before the next fit
                fit_s += time.perf_counter() - t0
                step()
        boundaries = capture.stage_boundaries()
    own = None
    if getattr(model.model, "num_classes", None) == test.num_classes:
        own = model_accuracy(model.model, test, batch_size, device=dev)
    settings = {
        "train": train.describe(), "test": test.describe(), "validation": {
            "fraction": validation_fraction, "seed": seed, "fit_examples": n_fit, "validation_examples": len(val_idx),
            "how": "class-stratified seeded draw from the training split; picks the L2 (best accuracy, ties: lower loss)"},
        "pooling": "2x2 max" if pool else "none", "l2_grid": grid, "fit": FIT_METHOD, "max_iter": max_iter,
        "batch_size": batch_size, "layer_patterns": patterns, "layer_groups": len(groups),
        "max_feature_bytes": max_feature_bytes, "device": describe_device(dev),
        "inputs": spec.describe(train.image_shape), "seconds": {"features": round(extract_s, 2), "fits": round(fit_s, 2),
                                                                "total": round(time.perf_counter() - started, 2)},
        "package_versions": package_versions(),
    }
    return ProbeResult(model.ref, rows, boundaries, own, model.provenance, settings)


def _fit_layer(index, layer, x, x_test, y, y_test, n_fit, num_classes, grid, max_iter) -> dict:
    """The L2 path on the fit part, the choice on the validation part, the refit on all of ``x``, the test accuracy."""
    x_fit, y_fit, x_val, y_val = x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:]
    path, probe, best = [], None, None
    for l2 in grid:
        probe = fit_softmax(x_fit, y_fit, num_classes, l2, init=probe, max_iter=max_iter)
        entry = {"l2": l2, "accuracy": probe.accuracy(x_val, y_val), "loss": probe.loss(x_val, y_val),
                 "iterations": probe.iterations}
        path.append(entry)
        if best is None or (entry["accuracy"], -entry["loss"]) > (best[0]["accuracy"], -best[0]["loss"]):
            best = (entry, probe)
    chosen, start = best
    final = fit_softmax(x, y, num_classes, chosen["l2"], init=start, max_iter=max_iter)
    return asdict(layer) | {
        "index": index, "chosen_l2": chosen["l2"], "validation_accuracy": chosen["accuracy"], "validation_path": path,
        "train_accuracy": final.accuracy(x, y), "test_accuracy": final.accuracy(x_test, y_test),
        "iterations": final.iterations, "converged": final.iterations < max_iter,
    }
