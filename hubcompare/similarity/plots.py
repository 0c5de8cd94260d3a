"""Figures a researcher would put on a slide: CKA heatmaps and the block-structure panel.

Uses matplotlib's object API (``Figure``; no pyplot global state, no display needed). Layer 0 is
at the bottom-left as in the paper; rows are model A, columns model B, and both axes say which
model they belong to. Stage boundaries are drawn as lines, detected blocks outlined, undefined
(NaN) cells grey. Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..provenance import atomic_write_figure

__all__ = ["plot_cka", "plot_block_report"]

MAX_NAMED_TICKS = 40


def _ticks(ax, axis: str, names: Sequence[str]) -> None:
    n = len(names)
    if n <= MAX_NAMED_TICKS:
        pos, labels = np.arange(n), list(names)
    else:
        step = int(np.ceil(n / 20))
        pos = np.arange(0, n, step)
        labels = [f"{i}" for i in pos]
    fontsize = 7 if n > 16 else 8
    if axis == "x":
        ax.set_xticks(pos, labels, rotation=90, fontsize=fontsize)
    else:
        ax.set_yticks(pos, labels, fontsize=fontsize)


def _heatmap(fig, ax, value, names_a, names_b, bounds_a, bounds_b, label_a, label_b, title, vmin=0.0, vmax=1.0,
             blocks=(), cbar_label="CKA"):
    cmap = mpl.colormaps["magma"].with_extremes(bad="#bbbbbb")
    im = ax.imshow(np.ma.masked_invalid(value), origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    for b in bounds_a:
        ax.axhline(b - 0.5, color="white", lw=0.8, alpha=0.8)
    for b in bounds_b:
        ax.axvline(b - 0.5, color="white", lw=0.8, alpha=0.8)
    for blk in blocks:
        ax.add_patch(Rectangle((blk.start - 0.5, blk.start - 0.5), blk.size, blk.size, fill=False, ec="#00e5ff", lw=2))
    _ticks(ax, "x", names_b)
    _ticks(ax, "y", names_a)
    ax.set_xlabel(label_b, fontsize=9)
    ax.set_ylabel(label_a, fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(cbar_label)



def _data_line(result) -> str:
    p = result.provenance
    d = p.get("dataset", {})
    return f"{d.get('name', '?')} {d.get('split', '')}, {p.get('num_examples', '?')} examples, batch {p.get('batch_size', '?')}, {p.get('passes', '?')} pass(es)"


def plot_cka(result, path: str | Path, blocks: Sequence = ()) -> Path:
    """Heatmap of a :class:`~hubcompare.similarity.results.CKAResult` (rows: model A, columns: model B)."""
    la, lb = result.shape
    size = min(14.0, max(5.0, 0.22 * max(la, lb) + 3))
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.add_subplot()
    if result.kind == "cross":
        title = f"Cross-model CKA\nrows: {result.ref_a}\ncolumns: {result.ref_b}\n{_data_line(result)}"
        label_a, label_b = f"{result.ref_a}  (model A) layer", f"{result.ref_b}  (model B) layer"
    else:
        what = "CKA, first PC removed" if result.kind == "within-pc1-removed" else "Within-model CKA"
        title = f"{what}: {result.ref_a}\n{_data_line(result)}"
        label_a = label_b = f"{result.ref_a} layer"
    _heatmap(fig, ax, result.value, result.layers_a, result.layers_b, result.boundaries_a, result.boundaries_b,
             label_a, label_b, title, blocks=blocks)
    return atomic_write_figure(fig, path)


def plot_block_report(report, path: str | Path) -> Path:
    """Four panels: CKA with blocks outlined, CKA with PC1 removed, PC1 cosine similarity, PC1 fraction."""
    cka, names = report.cka, report.cka.layers_a
    n = len(names)
    fig = Figure(figsize=(16, 13), layout="constrained")
    axes = fig.subplots(2, 2)
    data = _data_line(cka)
    _heatmap(fig, axes[0, 0], cka.value, names, names, cka.boundaries_a, cka.boundaries_a, "layer", "layer",
             f"CKA ({len(report.blocks)} block(s) outlined)", blocks=report.blocks)
    _heatmap(fig, axes[0, 1], report.cka_pc1_removed.value, names, names, cka.boundaries_a, cka.boundaries_a,
             "layer", "layer", "CKA after removing each layer's first PC", blocks=report.blocks)
    _heatmap(fig, axes[1, 0], report.pcs.cosine, names, names, cka.boundaries_a, cka.boundaries_a, "layer", "layer",
             f"|cosine| of layers' first PCs ({report.pcs.num_examples} examples)", blocks=report.blocks, cbar_label="|cos|")
    ax = axes[1, 1]
    x = np.arange(n)
    ax.bar(x, report.pcs.fraction, color="#444")
    for blk in report.blocks:
        ax.axvspan(blk.start - 0.5, blk.stop + 0.5, color="#00e5ff", alpha=0.25)
    p = report.params
    ax.axhline(p["pc1_threshold"], color="crimson", ls="--", lw=1, label=f"per-layer threshold {p['pc1_threshold']}")
    ax.axhline(p["min_mean_pc1"], color="darkorange", ls=":", lw=1, label=f"block mean >= {p['min_mean_pc1']}")
    for b in cka.boundaries_a:
        ax.axvline(b - 0.5, color="grey", lw=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.5, n - 0.5)
    _ticks(ax, "x", names)
    ax.set_ylabel("fraction of variance on PC1")
    ax.set_title("First principal component's share of variance per layer")
    ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Block structure of {report.ref}\n{data}", fontsize=12)
    return atomic_write_figure(fig, path)
