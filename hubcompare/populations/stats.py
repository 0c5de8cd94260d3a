"""Vectorised statistics for comparing populations of classifiers (numpy + scipy; no I/O).

Inputs are correctness matrices (models x examples, bool), predicted-label matrices (models x
examples, int) or per-model per-class accuracies. Random half splits and label permutations are
drawn from a numpy ``Generator`` so that one seed reproduces them. Heavy steps are single matrix
products over all splits at once, so 1,000 splits of 100 models x 10,000 examples take well
under a second.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "BandCount",
    "PermutationTest",
    "Welch",
    "bh_qvalues",
    "bh_qvalues_rows",
    "class_accuracy",
    "half_differences",
    "kappa_matrix",
    "label_counts",
    "mcnemar_exact",
    "mean_agreement_across",
    "mean_agreement_within",
    "pair_summary",
    "permutation_test",
    "random_halves",
    "random_relabelings",
    "split_sd",
    "standardized_band",
    "welch",
    "welch_halves",
]


# --- error consistency and agreement ------------------------------------------------------------
def kappa_matrix(ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """Cohen's kappa on right/wrong (Geirhos et al. 2020) for every model of ``ca`` against every model of ``cb``.

    c_obs = share of examples both right or both wrong; c_exp = p1 p2 + (1 - p1)(1 - p2);
    kappa = (c_obs - c_exp) / (1 - c_exp), NaN where c_exp = 1 (both always right or always wrong).
    """
    a = np.asarray(ca, dtype=np.float32)
    b = a if cb is ca else np.asarray(cb, dtype=np.float32)
    n = a.shape[1]
    if n >= 1 << 24:
        a, b = a.astype(np.float64), b.astype(np.float64)
    both_right = (a @ b.T).astype(np.float64)  # integer counts below 2**24: exact in float32
    ra, rb = a.sum(1, dtype=np.float64)[:, None], b.sum(1, dtype=np.float64)[None, :]
    c_obs = (2 * both_right + n - ra - rb) / n
    pa, pb = ra / n, rb / n
    c_exp = pa * pb + (1 - pa) * (1 - pb)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = (c_obs - c_exp) / (1 - c_exp)
    return np.where(np.isclose(c_exp, 1.0, rtol=0, atol=1e-15), np.nan, k)


def pair_summary(values: np.ndarray, within: bool) -> dict:
    """Mean/median/min/max over model pairs (distinct pairs i < j when ``within``)."""
    v = values[np.triu_indices(values.shape[0], k=1)] if within else values.ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"pairs": 0, "mean": None, "median": None, "min": None, "max": None}
    return {"pairs": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
            "max": float(v.max())}


def label_counts(predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(examples, classes): how many models predicted each class for each example."""
    n = predicted.shape[1]
    flat = (predicted.astype(np.int64) + num_classes * np.arange(n)[None, :]).ravel()
    return np.bincount(flat, minlength=n * num_classes).reshape(n, num_classes)


def mean_agreement_across(pa: np.ndarray, pb: np.ndarray, num_classes: int) -> float:
    """Share of (model of A, model of B, example) triples with the same predicted label."""
    ca, cb = label_counts(pa, num_classes), label_counts(pb, num_classes)
    return float((ca * cb).sum() / (pa.shape[0] * pb.shape[0] * pa.shape[1]))


def mean_agreement_within(p: np.ndarray, num_classes: int) -> float | None:
    """Share of (distinct pair of models, example) triples with the same predicted label (None for one model)."""
    m, n = p.shape
    if m < 2:
        return None
    c = label_counts(p, num_classes)
    return float(((c * c).sum() - m * n) / (m * (m - 1) * n))


def mcnemar_exact(ca: np.ndarray, cb: np.ndarray) -> dict:
    """McNemar's exact test for two models on the same examples: binomial test on the discordant pairs."""
    ca, cb = np.asarray(ca, bool), np.asarray(cb, bool)
    b = int((ca & ~cb).sum())  # A right, B wrong
    c = int((~ca & cb).sum())  # A wrong, B right
    p = 1.0 if b + c == 0 else float(sps.binomtest(b, b + c, 0.5).pvalue)
    return {"a_right_b_wrong": b, "a_wrong_b_right": c, "p_value": p}


# --- random splits ------------------------------------------------------------------------------
def random_halves(rng: np.random.Generator, m: int, splits: int) -> np.ndarray:
    """(splits, m) int8 membership: +1 first half, -1 second half, 0 left out (odd m); halves are disjoint, m // 2 each."""
    h = m // 2
    order = rng.random((splits, m)).argsort(1)
    memb = np.zeros((splits, m), dtype=np.int8)
    rows = np.arange(splits)[:, None]
    memb[rows, order[:, :h]] = 1
    memb[rows, order[:, h:2 * h]] = -1
    return memb


def random_relabelings(rng: np.random.Generator, m: int, m_a: int, perms: int) -> np.ndarray:
    """(perms, m) bool: a random choice of ``m_a`` of the ``m`` pooled models relabelled as side A."""
    order = rng.random((perms, m)).argsort(1)
    out = np.zeros((perms, m), dtype=bool)
    out[np.arange(perms)[:, None], order[:, :m_a]] = True
    return out


def half_differences(correct: np.ndarray, membership: np.ndarray, chunk: int = 250) -> np.ndarray:
    """(splits, examples) float32: per-example accuracy of the first half minus the second, for each split."""
    c = np.asarray(correct, dtype=np.float32)
    h = int((membership[0] == 1).sum())
    out = np.empty((membership.shape[0], c.shape[1]), dtype=np.float32)
    for s in range(0, membership.shape[0], chunk):
        out[s:s + chunk] = membership[s:s + chunk].astype(np.float32) @ c  # integer sums: exact in float32
    out /= h
    return out


def split_sd(p: np.ndarray, m_a: int, m_b: int) -> np.ndarray:
    """SD of (mean of m_a models - mean of the other m_b) on an example, given the pooled accuracy ``p`` there.

    Hypergeometric: splitting the m = m_a + m_b models at random, Var = p (1 - p) m^2 / (m_a m_b (m - 1)).
    Zero where every model is right (or wrong): the difference is then exactly 0.
    """
    m = m_a + m_b
    return np.sqrt(np.clip(p * (1 - p), 0, None) * m * m / (m_a * m_b * (m - 1)))


def standardized_band(null: np.ndarray, sd: np.ndarray, level: float = 0.95) -> tuple[float, float, np.ndarray]:
    """Central ``level`` band ('linear' quantiles) of split-half differences divided by their per-example SD, pooled over examples.

    A per-example quantile would condition on one population's realised totals (an example every
    model got right has the band [0, 0]); standardising by :func:`split_sd` puts every example on
    one scale. Returns (lower, upper, number of examples outside the band in each split). When no example's
    correctness varies across the population (every SD is 0: the models agree on every example), every
    split-half difference is 0, so the band is [0, 0] and no example is outside it.
    """
    ok = sd > 0
    if not ok.any():
        return 0.0, 0.0, np.zeros(null.shape[0], dtype=np.int64)
    z = null[:, ok] / sd[ok].astype(np.float32)
    flat = z.ravel()
    ranks = np.array([(1 - level) / 2, 1 - (1 - level) / 2]) * (flat.size - 1)
    k = np.unique(np.concatenate([np.floor(ranks), np.ceil(ranks)]).astype(np.int64))
    part = np.partition(flat, k)

    def q(r: float) -> float:
        f, c = int(np.floor(r)), int(np.ceil(r))
        return float(part[f] + (r - f) * (part[c] - part[f]))

    lo, hi = q(ranks[0]), q(ranks[1])
    tol = 1e-5
    return lo, hi, ((z < lo - tol) | (z > hi + tol)).sum(1)


@dataclass
class BandCount:
    """How many examples fall outside a fixed per-example band: observed, and under each relabelling of the
    pooled models at the sides' own sizes (the null the count is judged against, whatever made the band)."""

    observed: int
    null: np.ndarray  # the count under each relabelling
    p_value: float  # (1 + #{null >= observed}) / (1 + permutations): conservative where counts tie

    def to_json(self) -> dict:
        return {"statistic": "examples outside the band", "null": "relabellings of the pooled models at the sides' sizes",
                "observed": self.observed, "null_mean": float(self.null.mean()), "null_q95": float(np.quantile(self.null, 0.95)),
                "p_value": self.p_value, "permutations": int(self.null.size)}


@dataclass
class PermutationTest:
    """Mean over examples of the squared per-example accuracy difference, against model-label permutations."""

    observed: float
    null: np.ndarray  # the statistic under each permutation
    p_value: float  # (1 + #{null >= observed}) / (1 + permutations)
    outside: BandCount | None = None  # the examples outside a band, under the same permutations (when a band was given)

    def to_json(self) -> dict:
        return {"statistic": "mean over examples of (accuracy_A - accuracy_B)^2", "observed": self.observed,
                "p_value": self.p_value, "permutations": int(self.null.size), "null_mean": float(self.null.mean()),
                "null_q95": float(np.quantile(self.null, 0.95))}


def _diff(sum_a: np.ndarray, total: np.ndarray, m_a: int, m_b: int) -> np.ndarray:
    return sum_a / m_a - (total - sum_a) / m_b


def _outside(diff: np.ndarray, band: tuple[np.ndarray, np.ndarray], tol: float) -> np.ndarray:
    return ((diff < band[0] - tol) | (diff > band[1] + tol)).sum(-1)


def permutation_test(ca: np.ndarray, cb: np.ndarray, perms: int, rng: np.random.Generator, chunk: int = 250,
                     band: tuple[np.ndarray, np.ndarray] | None = None, tol: float = 0.0) -> PermutationTest:
    """Do A and B differ per example more than random relabellings of their pooled models do?

    With ``band`` (per-example lower and upper bounds on accuracy_A - accuracy_B, ``tol`` of slack),
    also counts the examples outside it under the same relabellings: a band read off two halves of
    one population (a coarser lattice of differences than A vs B) holds a different share of the null
    at A's and B's sizes than at the halves', so only the count at the true sizes says what to expect.
    """
    pooled = np.concatenate([np.asarray(ca, np.float32), np.asarray(cb, np.float32)])
    m_a, m_b = len(ca), len(cb)
    total = pooled.sum(0, dtype=np.float64)
    d = _diff(pooled[:m_a].sum(0, dtype=np.float64), total, m_a, m_b)
    observed = float((d * d).mean())
    seen = None if band is None else int(_outside(d, band, tol))
    labels = random_relabelings(rng, m_a + m_b, m_a, perms)
    null = np.empty(perms)
    counts = np.empty(perms, np.int64)
    for s in range(0, perms, chunk):
        sums = (labels[s:s + chunk].astype(np.float32) @ pooled).astype(np.float64)  # exact integer sums
        d = _diff(sums, total, m_a, m_b)
        null[s:s + chunk] = (d * d).mean(-1)
        if band is not None:
            counts[s:s + chunk] = _outside(d, band, tol)
    p = (1 + int((null >= observed * (1 - 1e-12)).sum())) / (1 + perms)
    outside = None if band is None else BandCount(seen, counts, (1 + int((counts >= seen).sum())) / (1 + perms))
    return PermutationTest(observed, null, p, outside)


# --- class-level tests --------------------------------------------------------------------------
def class_accuracy(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(models, classes): each model's accuracy on the examples of each class (NaN for an empty class)."""
    onehot = np.zeros((len(labels), num_classes))
    onehot[np.arange(len(labels)), labels] = 1
    counts = onehot.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.asarray(correct, np.float64) @ onehot) / counts


@dataclass
class Welch:
    """Welch's unequal-variance t-test per column, with the mean difference's confidence interval."""

    mean_a: np.ndarray
    mean_b: np.ndarray
    diff: np.ndarray  # mean_a - mean_b
    se: np.ndarray
    t: np.ndarray
    df: np.ndarray  # Welch-Satterthwaite
    p: np.ndarray  # two-sided
    ci_lo: np.ndarray
    ci_hi: np.ndarray


def welch(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> Welch:
    """Columns of ``a`` (n_a, K) vs ``b`` (n_b, K); t and p from ``scipy.stats.ttest_ind(equal_var=False)``.

    The interval is diff ± t_{df, (1 + confidence) / 2} · se with se² = s_a²/n_a + s_b²/n_b and the
    Welch-Satterthwaite df. Columns with zero variance on both sides get NaN t, p and df.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = a.shape[0], b.shape[0]
    va, vb = a.var(0, ddof=1) / na, b.var(0, ddof=1) / nb
    se2 = va + vb
    with np.errstate(divide="ignore", invalid="ignore"):
        df = se2 ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
        with warnings.catch_warnings():  # a column constant on a side makes scipy warn of "catastrophic cancellation";
            warnings.simplefilter("ignore", RuntimeWarning)  # class_diff says what it means (NaN p, or one side's variance)
            test = sps.ttest_ind(a, b, axis=0, equal_var=False)
        t, p = np.asarray(test.statistic, np.float64), np.asarray(test.pvalue, np.float64)
        se = np.sqrt(se2)
        half = sps.t.ppf((1 + confidence) / 2, df) * se
    diff = a.mean(0) - b.mean(0)
    return Welch(a.mean(0), b.mean(0), diff, se, t, df, p, diff - half, diff + half)


def welch_halves(x: np.ndarray, membership: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Welch's test between the two halves of every split at once (same formulas as :func:`welch`).

    ``x`` (models, K), ``membership`` (splits, models) from :func:`random_halves`. Returns the mean
    differences, two-sided p-values and CI half-widths, each (splits, K).
    """
    x = np.asarray(x, np.float64)
    h = int((membership[0] == 1).sum())
    first, second = (membership == 1).astype(np.float64), (membership == -1).astype(np.float64)
    m1, m2 = first @ x / h, second @ x / h
    v1 = (first @ (x * x) - h * m1 * m1) / (h - 1) / h
    v2 = (second @ (x * x) - h * m2 * m2) / (h - 1) / h
    v1, v2 = np.maximum(v1, 0), np.maximum(v2, 0)
    se2 = v1 + v2
    diff = m1 - m2
    with np.errstate(divide="ignore", invalid="ignore"):
        df = se2 ** 2 / ((v1 ** 2 + v2 ** 2) / (h - 1))
        t = diff / np.sqrt(se2)
        p = 2 * sps.t.sf(np.abs(t), df)
        half = sps.t.ppf((1 + confidence) / 2, df) * np.sqrt(se2)
    tiny = se2 <= 1e-24
    p = np.where(tiny, np.nan, p)
    return diff, p, np.where(tiny, np.nan, half)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) along the last axis; NaN p-values stay NaN and are not counted."""
    p = np.asarray(p, np.float64)
    if p.ndim > 1:
        return bh_qvalues_rows(p.reshape(-1, p.shape[-1])).reshape(p.shape)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    ps = p[ok]
    m = ps.size
    if m == 0:
        return q
    order = np.argsort(ps, kind="stable")
    ranked = ps[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def bh_qvalues_rows(p: np.ndarray) -> np.ndarray:
    """:func:`bh_qvalues` for every row of a (splits, K) matrix at once."""
    p = np.asarray(p, np.float64)
    ok = np.isfinite(p)
    m = ok.sum(1, keepdims=True)
    filled = np.where(ok, p, np.inf)
    order = np.argsort(filled, axis=1, kind="stable")
    ps = np.take_along_axis(filled, order, 1)
    rank = np.arange(1, p.shape[1] + 1)[None, :]
    with np.errstate(invalid="ignore"):
        ranked = np.where(np.isfinite(ps), ps * m / rank, np.inf)
    ranked = np.minimum.accumulate(ranked[:, ::-1], axis=1)[:, ::-1]
    q = np.empty_like(p)
    np.put_along_axis(q, order, np.minimum(ranked, 1.0), 1)
    return np.where(ok, q, np.nan)
