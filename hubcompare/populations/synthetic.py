"""Synthetic populations whose truth is known, to check the population statistics (tests, benchmarks).

Model m of a population is right on example n with probability sigmoid(skill_m + ease_n + shift_k)
where k is the example's class: two populations drawn with the same ``ease`` and no shifts differ
only by chance; a ``class_shift`` plants a difference in chosen classes; an ``ease`` drawn anew
for one population plants per-example differences at equal overall accuracy. A wrong model
predicts one of the other classes at random.
"""

from __future__ import annotations

import numpy as np

from .sides import Side

__all__ = ["reshuffled_ease", "synthetic_labels", "synthetic_pair", "synthetic_side"]


def synthetic_labels(n: int, num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels and a per-example ease (logit), both (n,)."""
    labels = np.arange(n) % num_classes
    return labels, rng.normal(2.0, 1.5, n)


def synthetic_side(label: str, models: int, labels: np.ndarray, ease: np.ndarray, rng: np.random.Generator,
                   num_classes: int, class_shift: dict[int, float] | None = None, skill_sd: float = 0.1) -> Side:
    """A :class:`Side` of ``models`` synthetic classifiers on ``labels``."""
    logit = ease[None, :] + rng.normal(0, skill_sd, (models, 1))
    for k, s in (class_shift or {}).items():
        logit[:, labels == k] += s
    right = rng.random(logit.shape) < 1 / (1 + np.exp(-logit))
    wrong = (labels[None, :] + rng.integers(1, num_classes, logit.shape)) % num_classes
    predicted = np.where(right, labels[None, :], wrong)
    return Side.from_arrays(label, predicted, labels, classes=[f"class{k}" for k in range(num_classes)],
                            dataset={"name": "synthetic", "split": "test", "num_examples": len(labels),
                                     "num_classes": num_classes, "fingerprint": "synthetic"})


def reshuffled_ease(ease: np.ndarray, labels: np.ndarray, rng: np.random.Generator, share: float = 1.0) -> np.ndarray:
    """``ease`` with a ``share`` of each class's examples trading ease among themselves: per-example
    differences planted at (nearly) unchanged class accuracy."""
    out = ease.copy()
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        pick = rng.choice(idx, round(share * idx.size), replace=False)
        out[pick] = ease[rng.permutation(pick)]
    return out


def synthetic_pair(models_a: int, models_b: int, n: int, num_classes: int, seed: int, *, reshuffle: float = 0.0,
                   class_shift_b: dict[int, float] | None = None) -> tuple[Side, Side]:
    """Sides A and B on the same ``n`` examples: no difference but chance unless B's ease is reshuffled
    on a ``reshuffle`` share of the examples or shifted on some classes."""
    rng = np.random.default_rng(seed)
    labels, ease = synthetic_labels(n, num_classes, rng)
    a = synthetic_side("A", models_a, labels, ease, rng, num_classes)
    ease_b = reshuffled_ease(ease, labels, rng, reshuffle) if reshuffle else ease
    return a, synthetic_side("B", models_b, labels, ease_b, rng, num_classes, class_shift=class_shift_b)
