"""The grounding tests' scores: plain numpy over measure matrices, one function per test, each with its chance level
and pass rule (Ding, Denain & Steinhardt 2021; Klabunde et al.'s ReSi benchmark, ICLR 2025).

Every function takes values already oriented as similarities (a distance is negated first, :func:`as_similarity`)
and returns a :class:`Score`. NaN entries (a layer on which a measure is undefined) are left out of a score, and a
test with nothing left to score is NaN (and fails).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["RULES", "Score", "as_similarity", "control", "function", "layer_order", "pc_removal", "spearman",
           "specificity"]

# test -> (threshold, chance, the rule as the table and the docs print it)
RULES: dict[str, tuple[float, float | None, str]] = {
    "specificity": (0.8, None, "accuracy >= 0.8 (chance 1/layers)"),
    "layer order": (0.5, 0.0, "mean Spearman rho >= 0.5 (chance 0)"),
    "top-pc removal": (0.5, 0.0, "Spearman rho >= 0.5 (chance 0)"),
    "low-pc removal": (0.5, 0.0, "Spearman rho >= 0.5 (chance 0)"),
    "function": (0.5, 0.0, "Spearman rho >= 0.5 (chance 0)"),
    "control": (0.9, 0.5, "AUC >= 0.9 (chance 0.5)"),
}


@dataclass
class Score:
    """One measure on one test: ``score`` against ``chance``, ``passed`` by the test's rule; ``count``: the items
    scored (layer pairs, anchors, seed pairs)."""

    test: str
    measure: str
    score: float
    chance: float
    count: int

    @property
    def rule(self) -> str:
        return RULES[self.test][2]

    @property
    def passed(self) -> bool:
        return math.isfinite(self.score) and self.score >= RULES[self.test][0]

    def to_json(self) -> dict:
        return {"test": self.test, "measure": self.measure, "score": None if not math.isfinite(self.score) else self.score,
                "chance": self.chance, "passed": self.passed, "rule": self.rule, "count": self.count}


def as_similarity(value: np.ndarray, orientation: str) -> np.ndarray:
    """``value`` with larger meaning more similar (a distance negated)."""
    return -value if orientation == "distance" else value


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their ranks), as scipy's ``rankdata``."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` over the entries where both are finite (NaN with fewer than 3,
    or when either is constant there)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    rx, ry = _ranks(x[ok]), _ranks(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def _mean(values: list[float]) -> tuple[float, int]:
    finite = [v for v in values if math.isfinite(v)]
    return (float(np.mean(finite)) if finite else float("nan")), len(finite)


def specificity(measure: str, cross: list[np.ndarray]) -> Score:
    """For each layer l of seed i and each other seed j (``cross``: the (L, L) matrices seed i's layers by seed j's,
    every ordered pair), whether seed j's layer l is the most similar of seed j's layers (ties count as misses)."""
    hits = total = 0
    num_layers = cross[0].shape[0] if cross else 0
    for s in cross:
        for layer, row in enumerate(s):
            if not np.isfinite(row).all():
                continue
            best = np.flatnonzero(row == row.max())
            hits += int(len(best) == 1 and best[0] == layer)
            total += 1
    return Score("specificity", measure, hits / total if total else float("nan"),
                 1.0 / num_layers if num_layers else float("nan"), total)


def layer_order(measure: str, within: list[np.ndarray]) -> Score:
    """Within each model (``within``: its (L, L) matrix), for each anchor layer: the rank correlation between the
    similarity to every other layer and minus the distance in layers; the mean over anchors and models."""
    rhos = []
    for s in within:
        n = s.shape[0]
        for anchor in range(n):
            others = [m for m in range(n) if m != anchor]
            if len(others) >= 3:
                rhos.append(spearman(s[anchor, others], -np.abs(np.array(others) - anchor)))
    score, count = _mean(rhos)
    return Score("layer order", measure, score, RULES["layer order"][1], count)


def pc_removal(measure: str, similarity: list[np.ndarray], accuracy: list[np.ndarray],
               test: str = "top-pc removal") -> Score:
    """The rank correlation between the measure (a layer vs the same layer with its top k principal components
    removed, k = 0, 1, ...) and the change in a linear probe's accuracy that the removal causes (accuracy at k minus
    at 0), pooled over every probed layer and k >= 1 (Ding et al.'s sensitivity test): a measure passes only when
    its values mean the same functional change in every layer, not merely when it falls as components go (k = 0,
    the layer against itself, is the same point for every measure and is left out). ``test``: ``top-pc removal`` (the
    top components removed) or ``low-pc removal`` (the low-variance end removed, Ding et al.'s direction)."""
    sim = np.concatenate([np.asarray(s, float)[1:] for s in similarity]) if similarity else np.array([])
    change = np.concatenate([np.asarray(a, float)[1:] - a[0] for a in accuracy]) if accuracy else np.array([])
    ok = np.isfinite(sim) & np.isfinite(change)
    return Score(test, measure, spearman(sim, change), RULES[test][1], int(ok.sum()))


def function(measure: str, similarity: np.ndarray, agreement: np.ndarray) -> Score:
    """Across pairs of models: the rank correlation between the measure at their last compared layer and the share
    of examples on which their predictions agree."""
    ok = np.isfinite(similarity)
    return Score("function", measure, spearman(similarity, agreement), RULES["function"][1], int(ok.sum()))


def control(measure: str, real_pairs: np.ndarray, mixed_pairs: np.ndarray) -> Score:
    """The probability that a pair of real models is more similar than a real model and a control (shuffled-label)
    model, over every such couple of pairs (ties count half): an AUC."""
    a, b = np.asarray(real_pairs, float), np.asarray(mixed_pairs, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return Score("control", measure, float("nan"), 0.5, 0)
    diff = a[:, None] - b[None, :]
    auc = float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)
    return Score("control", measure, auc, 0.5, int(diff.size))
