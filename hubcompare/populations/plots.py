"""Figures of population comparisons: the per-example scatter and the class-difference plot.

Both show the null beside the comparison, as the paper does: two disjoint halves of one
population treated like A and B. matplotlib's object API (``Figure``), written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..provenance import atomic_write_figure

__all__ = ["plot_agreement", "plot_class_diff"]


def _dataset_line(provenance: dict) -> str:
    d = provenance.get("dataset", {})
    return f"{d.get('name', '?')} {d.get('split', '')}, {d.get('num_examples', '?')} examples (fingerprint {d.get('fingerprint', '?')})"


def plot_agreement(result, path: str | Path) -> Path:
    """Per-example accuracy of A vs B over the split-half null; and the permutation test's null distribution."""
    panels = 2 if result.permutation is not None else 1
    fig = Figure(figsize=(6.2 * panels, 6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, panels))
    ax = axes[0]
    rng = np.random.default_rng(0)  # display jitter only
    n = len(result.ids)
    jit = lambda: rng.uniform(-0.004, 0.004, n)
    if result.null is not None:
        nl = result.null
        ax.scatter(nl["example_a"] + jit(), nl["example_b"] + jit(), s=4, c="#9e9e9e", alpha=0.35, lw=0,
                   label=f"null: two halves of {nl['side']} ({nl['half_size']} vs {nl['half_size']} models)")
    outside = result.outside
    inside = np.ones(n, bool) if outside is None else ~outside
    ax.scatter(result.acc_a[inside] + jit()[inside], result.acc_b[inside] + jit()[inside], s=5, c="#1f77b4", alpha=0.5, lw=0,
               label=f"{result.label_a} vs {result.label_b}")
    if outside is not None and outside.any():
        ax.scatter(result.acc_a[outside], result.acc_b[outside], s=9, c="crimson", alpha=0.8, lw=0,
                   label=f"outside the null's 95% band: {int(outside.sum())} (null expects {result.null['expected_outside']:.0f})")
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_aspect("equal")
    ax.set_xlabel(f"per-example accuracy, {result.label_a} ({result.model_accuracy_a.size} models)")
    ax.set_ylabel(f"per-example accuracy, {result.label_b} ({result.model_accuracy_b.size} models)")
    ax.legend(loc="upper left", fontsize=7, markerscale=2)
    k = result.kappa["across"]["mean"]
    kappa = f"kappa across {k:.3f}, " if k is not None else ""
    ax.set_title(f"Per-example accuracy ({kappa}agreement {result.agreement['across']:.3f})", fontsize=10)
    if result.permutation is not None:
        pt, ax2 = result.permutation, axes[1]
        ax2.hist(pt.null, bins=40, color="#9e9e9e", label=f"{pt.null.size} relabellings of the pooled models")
        ax2.axvline(pt.observed, color="crimson", lw=2, label=f"observed (p = {pt.p_value:.3g})")
        ax2.set_xlabel("mean over examples of (accuracy A - accuracy B)$^2$")
        ax2.set_ylabel("permutations")
        ax2.set_title("Permutation test over model labels", fontsize=10)
        ax2.legend(fontsize=8)
    fig.suptitle(f"{result.label_a} vs {result.label_b}\n{_dataset_line(result.provenance)}", fontsize=11)
    return atomic_write_figure(fig, path)


def plot_class_diff(result, path: str | Path) -> Path:
    """Mean class-accuracy difference (A - B) with CIs, sorted; the split-half null's example and 95% band alongside."""
    w = result.welch
    order = np.argsort(np.nan_to_num(w.diff, nan=0.0))
    k = len(order)
    x = np.arange(k)
    fig = Figure(figsize=(max(7.0, 0.45 * k + 3), 5.5), layout="constrained")
    ax = fig.add_subplot()
    if result.null is not None:
        nl, ex = result.null, result.null["example"]
        ax.fill_between(x, nl["band_lo"][order], nl["band_hi"][order], step="mid", color="#cccccc", alpha=0.6,
                        label=f"null 95% band ({nl['splits']} splits of {nl['side']} into halves)")
        ax.errorbar(x + 0.2, ex["diff"][order], yerr=np.abs(np.vstack([ex["diff"] - ex["ci_lo"], ex["ci_hi"] - ex["diff"]])[:, order]),
                    fmt="s", ms=4, color="#7f7f7f", capsize=2, lw=1, label=f"null example: two halves of {nl['side']}")
    sig = result.significant[order]
    err = np.abs(np.vstack([w.diff - w.ci_lo, w.ci_hi - w.diff])[:, order])
    ax.errorbar(x[~sig] - 0.1, w.diff[order][~sig], yerr=err[:, ~sig], fmt="o", ms=5, color="#1f77b4", capsize=3,
                label=f"{result.label_a} - {result.label_b}")
    if sig.any():
        ax.errorbar(x[sig] - 0.1, w.diff[order][sig], yerr=err[:, sig], fmt="o", ms=6, color="crimson", capsize=3,
                    label=f"significant (BH q < {result.alpha:g}): {int(sig.sum())}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [result.classes[i] for i in order], rotation=60 if k > 12 else 30, ha="right", fontsize=8 if k > 20 else 9)
    ax.set_ylabel(f"class accuracy difference, {result.label_a} - {result.label_b}\n(mean over models, {100 * (1 - result.alpha):g}% CI)")
    ax.set_xlim(-0.7, k - 0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Per-class differences: {result.label_a} ({result.class_acc_a.shape[0]} models) vs {result.label_b} "
                 f"({result.class_acc_b.shape[0]} models), Welch's t-test\n{_dataset_line(result.provenance)}", fontsize=11)
    return atomic_write_figure(fig, path)
