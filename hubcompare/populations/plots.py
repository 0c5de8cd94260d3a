"""Figures of population comparisons: the per-example scatter and the class-difference plot.

Both show the null beside the comparison, as the paper does: two disjoint halves of one
population treated like A and B. matplotlib's object API (``Figure``), written atomically.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from ..similarity.plots import write_figure
from . import stats
from .agreement import BAND_TOL

__all__ = ["plot_agreement", "plot_class_diff"]

LATTICE_BINS = 60  # up to this many models a side, one histogram bin per attainable per-example accuracy
ANNOTATE_CELLS = 64  # write the count into each cell when the lattice has at most this many cells
FRACTION_TICKS = 10  # up to this many models, tick every attainable accuracy


def _dataset_line(provenance: dict) -> str:
    d = provenance.get("dataset", {})
    return f"{d.get('name', '?')} {d.get('split', '')}, {d.get('num_examples', '?')} examples (fingerprint {d.get('fingerprint', '?')})"


def _short(label: str, width: int = 48) -> str:
    """A side's label cut in the middle when long (paths, globs, @files), for axis labels and legends."""
    return label if len(label) <= width else label[: width // 2 - 1] + "..." + label[-(width // 2 - 2):]


def _models(n: int) -> str:
    return f"{n} model{'' if n == 1 else 's'}"


def _title(text: str, width: int = 100) -> str:
    """Wrap each line of a title so long side labels do not run off the figure."""
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _edges(m: int) -> np.ndarray:
    """Histogram bin edges for per-example accuracies of ``m`` models (multiples of 1/m): one bin per
    lattice value up to ``LATTICE_BINS`` models, else ``LATTICE_BINS`` equal bins."""
    if m <= LATTICE_BINS:
        half = 0.5 / m
        return np.linspace(-half, 1 + half, m + 2)
    return np.linspace(-0.5 / LATTICE_BINS, 1 + 0.5 / LATTICE_BINS, LATTICE_BINS + 2)


def _lattice_panel(ax, x, y, mx: int, my: int, norm, outside=None, band=None):
    """Counts of examples per cell of the (mx + 1) x (my + 1) lattice of per-example accuracies, log colour;
    cells holding examples outside the null's band outlined; the band's edges as dashed contours."""
    ex, ey = _edges(mx), _edges(my)
    h, _, _ = np.histogram2d(x, y, bins=[ex, ey])
    mesh = ax.pcolormesh(ex, ey, np.ma.masked_equal(h, 0).T, norm=norm, cmap="viridis", edgecolors="none")
    if (ex.size - 1) * (ey.size - 1) <= ANNOTATE_CELLS:
        for i, j in zip(*np.nonzero(h)):
            ax.text((ex[i] + ex[i + 1]) / 2, (ey[j] + ey[j + 1]) / 2, f"{int(h[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if h[i, j] < np.sqrt(max(h.max(), 1)) else "black")
    if outside is not None and outside.any():
        ho, _, _ = np.histogram2d(x[outside], y[outside], bins=[ex, ey])
        for i, j in zip(*np.nonzero(ho)):
            ax.add_patch(Rectangle((ex[i], ey[j]), ex[i + 1] - ex[i], ey[j + 1] - ey[j], fill=False, ec="crimson", lw=0.9))
    if band is not None:
        zlo, zhi, ma, mb = band
        g = np.linspace(0, 1, 401)
        gx, gy = np.meshgrid(g, g)
        sd = stats.split_sd((ma * gx + mb * gy) / (ma + mb), ma, mb)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(sd > 0, (gx - gy) / sd, np.nan)
        ax.contour(gx, gy, z, levels=sorted({zlo, zhi}), colors="crimson", linestyles="--", linewidths=1)
    ax.plot([0, 1], [0, 1], color="black", lw=0.6, ls=":")
    ax.set_xlim(ex[0], ex[-1])
    ax.set_ylim(ey[0], ey[-1])
    for m, set_ticks in ((mx, ax.set_xticks), (my, ax.set_yticks)):
        if m <= FRACTION_TICKS:  # a small lattice: tick every attainable accuracy, as k/m
            set_ticks(np.arange(m + 1) / m, [f"{i}/{m}" if 0 < i < m else str(i // m) for i in range(m + 1)])
    ax.set_aspect("equal")
    return mesh


def _outside(x, y, ma: int, mb: int, zlo: float, zhi: float) -> np.ndarray:
    sd = stats.split_sd((ma * x + mb * y) / (ma + mb), ma, mb)
    d = x - y
    return (d < zlo * sd - BAND_TOL) | (d > zhi * sd + BAND_TOL)


def plot_agreement(result, path: str | Path) -> Path:
    """Per-example accuracy of A vs B as counts per lattice cell, beside one split of the null drawn the same
    way (both with the null's 95% band); and the permutation test's null distribution.

    Per-example accuracies are multiples of 1/models, so a scatter is a lattice of overplotted dots:
    the panels count examples per lattice cell instead (log colour, counts written in when the lattice is small).
    """
    ma, mb = result.model_accuracy_a.size, result.model_accuracy_b.size
    la, lb = _short(result.label_a), _short(result.label_b)
    nl = result.null
    panels = 1 + (nl is not None) + (result.permutation is not None)
    fig = Figure(figsize=(5.4 * panels + 1.0, 6.2), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    ax = axes.pop(0)
    counts = [np.histogram2d(result.acc_a, result.acc_b, bins=[_edges(ma), _edges(mb)])[0].max()]
    if nl is not None:
        h = nl["half_size"]
        counts.append(np.histogram2d(nl["example_a"], nl["example_b"], bins=[_edges(h), _edges(h)])[0].max())
    norm = LogNorm(vmin=1, vmax=max(2.0, *counts))
    handles = []
    band = None if nl is None else (*nl["z_band"], ma, mb)
    mesh = _lattice_panel(ax, result.acc_a, result.acc_b, ma, mb, norm, result.outside, band)
    lattice_axes = [ax]
    if nl is not None:
        zlo, zhi = nl["z_band"]
        handles += [Line2D([], [], color="crimson", ls="--", lw=1, label=f"null's 95% band (|z| from {nl['splits']} splits of {_short(nl['side'], 30)})"),
                    Patch(fill=False, ec="crimson", label=f"cells outside it: {int(result.outside.sum())} examples "
                                                            f"(expected by chance: {nl['expected_outside']:.1f}, p = {nl['outside_test']['p_value']:.3g})")]
    ax.set_xlabel(f"per-example accuracy, {la} ({_models(ma)})")
    ax.set_ylabel(f"per-example accuracy, {lb} ({_models(mb)})")
    k = result.kappa["across"]["mean"]
    kappa = f"kappa across {k:.3f}, " if k is not None else ""
    title = f"A vs B: examples per cell ({kappa}agreement {result.agreement['across']:.3f})"
    if result.pair is not None:
        title += f"\none model a side: the 2 x 2 table; McNemar's exact p = {result.pair['mcnemar']['p_value']:.3g}"
    ax.set_title(title, fontsize=10)
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize=7, framealpha=0.9)
    if nl is not None:
        axn = axes.pop(0)
        lattice_axes.append(axn)
        h = nl["half_size"]
        ea, eb = nl["example_a"], nl["example_b"]
        _lattice_panel(axn, ea, eb, h, h, norm, _outside(ea, eb, h, h, zlo, zhi), (zlo, zhi, h, h))
        axn.set_xlabel(f"per-example accuracy, first half ({_models(h)})")
        axn.set_ylabel(f"per-example accuracy, second half ({_models(h)})")
        small = nl.get("too_small", False)
        axn.set_title(f"Null: one split of {_short(nl['side'], 30)} into halves" +
                      (f"\nTOO SMALL TO CARRY WEIGHT: halves of {_models(h)}" if small else ""),
                      fontsize=10, color="#b35900" if small else "black")
    fig.colorbar(mesh, ax=lattice_axes, shrink=0.8, label="examples per cell (log scale)")
    if result.permutation is not None:
        pt, ax2 = result.permutation, axes.pop(0)
        ax2.hist(pt.null, bins=40, color="#9e9e9e", label=f"{pt.null.size} relabellings of the pooled models")
        ax2.axvline(pt.observed, color="crimson", lw=2, label=f"observed (p = {pt.p_value:.3g})")
        ax2.set_xlabel("mean over examples of (accuracy A - accuracy B)$^2$")
        ax2.set_ylabel("permutations")
        ax2.set_title("Permutation test over model labels", fontsize=10)
        ax2.legend(fontsize=8)
    fig.suptitle(_title(f"{result.label_a} (A, {_models(ma)}) vs {result.label_b} (B, {_models(mb)})\n{_dataset_line(result.provenance)}",
                        int(14 * fig.get_figwidth())), fontsize=11)
    return write_figure(fig, path)


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
                        label=f"null 95% band ({nl['splits']} splits of {_short(nl['side'], 30)} into halves of {nl['half_size']})")
        ax.errorbar(x + 0.2, ex["diff"][order], yerr=np.abs(np.vstack([ex["diff"] - ex["ci_lo"], ex["ci_hi"] - ex["diff"]])[:, order]),
                    fmt="s", ms=4, color="#7f7f7f", capsize=2, lw=1, label=f"null example: two halves of {_short(nl['side'], 30)}")
    sig = result.significant[order]
    err = np.abs(np.vstack([w.diff - w.ci_lo, w.ci_hi - w.diff])[:, order])
    ax.errorbar(x[~sig] - 0.1, w.diff[order][~sig], yerr=err[:, ~sig], fmt="o", ms=5, color="#1f77b4", capsize=3,
                label=f"A - B: {_short(result.label_a, 30)} - {_short(result.label_b, 30)}")
    if sig.any():
        ax.errorbar(x[sig] - 0.1, w.diff[order][sig], yerr=err[:, sig], fmt="o", ms=6, color="crimson", capsize=3,
                    label=f"significant (BH q < {result.alpha:g}): {int(sig.sum())}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [result.classes[i] for i in order], rotation=60 if k > 12 else 30, ha="right", fontsize=8 if k > 20 else 9)
    ax.set_xlabel("class (sorted by the difference A - B)")
    ax.set_ylabel(f"class accuracy difference, A - B\n(mean over models, {100 * (1 - result.alpha):g}% CI)")
    ax.set_xlim(-0.7, k - 0.3)
    # below the axes, so it never covers the null's band or a class's interval
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    if result.null is not None and result.null.get("too_small", False):
        ax.set_title(f"null too small to carry weight: halves of {_models(result.null['half_size'])}", fontsize=10, color="#b35900")
    width = int(12 * fig.get_figwidth())
    fig.suptitle(_title(f"Per-class differences, Welch's t-test: A = {result.label_a} ({_models(result.class_acc_a.shape[0])}), "
                        f"B = {result.label_b} ({_models(result.class_acc_b.shape[0])})\n{_dataset_line(result.provenance)}", width),
                 fontsize=11)
    return write_figure(fig, path)
