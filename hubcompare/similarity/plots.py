"""Figures a researcher would put on a slide: CKA heatmaps and the block-structure panel.

Uses matplotlib's object API (``Figure``; no pyplot global state, no display needed). Layer 0 is
at the bottom-left as in the paper; rows are model A, columns model B, and both axes say which
model they belong to. Stage boundaries are drawn as lines, detected blocks outlined, undefined
(NaN) cells grey. Files are written atomically.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..errors import CompareError
from ..provenance import atomic_write_bytes, atomic_write_figure

__all__ = ["FIGURE_FORMATS", "plot_block_report", "plot_cka", "plot_cka_grid", "tick_plan", "write_figure"]

FIGURE_FORMATS = ("png", "pdf", "svg")
MAX_NAMED_TICKS = 32  # up to this many layers, every layer is ticked with its name
MAX_TICKS = 24  # more layers: about this many named ticks (blocks of a ResNet, or every k-th layer), a minor tick per layer
_BLOCK = re.compile(r"^stage(\d+)\.block(\d+)(?:\.|$)")


def write_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` atomically in the format its suffix names: PNG (150 dpi), or PDF / SVG with their text kept
    as text (TrueType in PDF, <text> in SVG), so a paper's editor can restyle it."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt == "png":
        return atomic_write_figure(fig, path)
    if fmt not in FIGURE_FORMATS:
        raise CompareError(f"cannot write a figure as {path.name}: use one of {', '.join(FIGURE_FORMATS)}", params=("format",))
    buf = io.BytesIO()
    with mpl.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42, "svg.hashsalt": "hubcompare"}):
        fig.savefig(buf, format=fmt, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else {"CreationDate": None})
    return atomic_write_bytes(path, buf.getvalue())


def _short(name: str, width: int = 28) -> str:
    """A long layer name cut in the middle for a tick label (the JSON keeps every name whole)."""
    return name if len(name) <= width else name[: width // 2 - 1] + "..." + name[-(width // 2 - 2):]


def tick_plan(names: Sequence[str], max_ticks: int = MAX_TICKS) -> tuple[list[int], list[str]]:
    """Which layers get a named tick. Few layers: all. A ResNet's ``stageS.blockB.*`` layers: the first layer of every
    k-th block of each stage (block 1 of every stage always), named ``stageS.blockB``, and every layer outside the
    blocks (stem, pool, logits); other models: every k-th layer, by its own name."""
    n = len(names)
    if n <= min(MAX_NAMED_TICKS, max_ticks):
        return list(range(n)), list(names)
    found = [_BLOCK.match(x) for x in names]
    if sum(m is not None for m in found) >= n / 2:
        firsts: dict[tuple[int, int], int] = {}
        others = []
        for i, m in enumerate(found):
            if m is None:
                others.append(i)
            else:
                firsts.setdefault((int(m[1]), int(m[2])), i)
        step = 1
        while step < n and len(others) + sum((b - 1) % step == 0 for _, b in firsts) > max_ticks:
            step += 1
        chosen = {i: names[i] for i in others}
        chosen |= {i: f"stage{s}.block{b}" for (s, b), i in firsts.items() if (b - 1) % step == 0}
        pos = sorted(chosen)
        return pos, [chosen[i] for i in pos]
    step = math.ceil(n / max_ticks)
    pos = list(range(0, n, step))
    return pos, [_short(names[i]) for i in pos]


def _ticks(ax, axis: str, names: Sequence[str], max_ticks: int = MAX_TICKS, fontsize: float | None = None) -> None:
    n = len(names)
    pos, labels = tick_plan(names, max_ticks)
    fontsize = fontsize or (7 if len(pos) > 16 else 8)
    if axis == "x":
        ax.set_xticks(pos, labels, rotation=90, fontsize=fontsize)
        if len(pos) < n:
            ax.set_xticks(np.arange(n), minor=True)
    else:
        ax.set_yticks(pos, labels, fontsize=fontsize)
        if len(pos) < n:
            ax.set_yticks(np.arange(n), minor=True)


def _heatmap(fig, ax, value, names_a, names_b, bounds_a, bounds_b, label_a, label_b, title, vmin=0.0, vmax=1.0,
             blocks=(), cbar_label="CKA", colorbar=True, max_ticks=MAX_TICKS, fontsize=None):
    cmap = mpl.colormaps["magma"].with_extremes(bad="#bbbbbb")
    im = ax.imshow(np.ma.masked_invalid(value), origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    for b in bounds_a:
        ax.axhline(b - 0.5, color="white", lw=0.8, alpha=0.8)
    for b in bounds_b:
        ax.axvline(b - 0.5, color="white", lw=0.8, alpha=0.8)
    for blk in blocks:
        ax.add_patch(Rectangle((blk.start - 0.5, blk.start - 0.5), blk.size, blk.size, fill=False, ec="#00e5ff", lw=2))
    _ticks(ax, "x", names_b, max_ticks, fontsize)
    _ticks(ax, "y", names_a, max_ticks, fontsize)
    ax.set_xlabel(label_b, fontsize=9)
    ax.set_ylabel(label_a, fontsize=9)
    ax.set_title(title, fontsize=10)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(cbar_label)
    return im


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _data_line(result) -> str:
    p = result.provenance
    d = p.get("dataset", {})
    passes = p.get("passes", "?")
    batches = p.get("num_batches")
    plan = f", {batches} minibatches" if isinstance(batches, int) else ""
    return (f"{d.get('name', '?')} {d.get('split', '')}, {p.get('num_examples', '?')} examples, batch {p.get('batch_size', '?')}"
            f"{plan}, {passes} pass{'' if passes == 1 else 'es'}")


def plot_cka(result, path: str | Path, blocks: Sequence = ()) -> Path:
    """Heatmap of a :class:`~hubcompare.similarity.results.CKAResult` (rows: model A, columns: model B), models
    named by their labels; the format follows the suffix (:func:`write_figure`)."""
    la, lb = result.shape
    size = min(14.0, max(5.0, 0.22 * min(max(la, lb), MAX_TICKS + 8) + 3))
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.add_subplot()
    width = int(9 * (size + 1.5))
    if result.kind == "cross":
        title = f"Cross-model CKA: {result.name_a} (rows) vs {result.name_b} (columns)\n{_data_line(result)}"
        label_a, label_b = f"{result.name_a} (model A): layer", f"{result.name_b} (model B): layer"
    else:
        what = "CKA, first PC removed" if result.kind == "within-pc1-removed" else "Within-model CKA"
        title = f"{what}: {result.name_a}\n{_data_line(result)}"
        label_a = label_b = f"{result.name_a}: layer"
    _heatmap(fig, ax, result.value, result.layers_a, result.layers_b, result.boundaries_a, result.boundaries_b,
             label_a, label_b, _wrap(title, width), blocks=blocks)
    return write_figure(fig, path)


def plot_cka_grid(results: dict, labels: Sequence[str], path: str | Path) -> Path:
    """Every pair of several models in one figure: ``results[(i, j)]`` (i < j) in row i, column j - 1 of an upper
    triangle, rows model i's layers and columns model j's, on one shared colour scale (0 to 1)."""
    n = len(labels)
    cell = 3.4 if n <= 4 else 2.6
    fig = Figure(figsize=(cell * (n - 1) + 1.2, cell * (n - 1) + 0.8), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n - 1, n - 1, squeeze=False))
    im, used = None, []
    for (i, j), r in sorted(results.items()):
        ax = axes[i, j - 1]
        im = _heatmap(fig, ax, r.value, r.layers_a, r.layers_b, r.boundaries_a, r.boundaries_b, f"{labels[i]}: layer",
                      f"{labels[j]}: layer", "", colorbar=False, max_ticks=8, fontsize=6)
        ax.set_title(f"mean same-depth CKA {r.summary()['mean_diagonal_cka']:.3f}", fontsize=8)
        used.append(ax)
    for ax in axes.flat:
        if ax not in used:
            ax.set_axis_off()
    first = next(iter(results.values()))
    if im is not None:
        fig.colorbar(im, ax=used, shrink=0.6, label="CKA (all panels)")
    fig.suptitle(_wrap(f"Cross-model CKA of every pair of {n} models\n{_data_line(first)}", int(11 * fig.get_figwidth())),
                 fontsize=11)
    return write_figure(fig, path)


def plot_block_report(report, path: str | Path) -> Path:
    """Four panels: CKA with blocks outlined, CKA with PC1 removed, PC1 cosine similarity, PC1 fraction."""
    cka, names = report.cka, report.cka.layers_a
    n, name = len(names), cka.name_a
    fig = Figure(figsize=(16, 13), layout="constrained")
    axes = fig.subplots(2, 2)
    data = _data_line(cka)
    _heatmap(fig, axes[0, 0], cka.value, names, names, cka.boundaries_a, cka.boundaries_a, "layer", "layer",
             f"CKA ({_blocks(len(report.blocks))} outlined)", blocks=report.blocks)
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
    ax.set_xlabel("layer")
    fig.suptitle(_wrap(f"Block structure of {name}\n{data}", 160), fontsize=12)
    return write_figure(fig, path)


def _blocks(k: int) -> str:
    return "no block" if k == 0 else f"{k} block{'s' if k > 1 else ''}"


def plot_measures(panels: Sequence[dict], layers_a: Sequence[str], layers_b: Sequence[str], label_a: str, label_b: str,
                  caption: str, path: str | Path) -> Path:
    """One heatmap per measure for one model pair (rows: model A's layers, columns: model B's), side by side, each on
    its measure's own range. ``panels``: ``{"title", "value" (La, Lb), "range" (lo, hi), "orientation"}`` each."""
    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.6 * cols + 0.6, 4.2 * rows + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, p in zip(axes, panels):
        lo, hi = p["range"]
        _heatmap(fig, ax, np.asarray(p["value"], dtype=float), layers_a, layers_b, (), (), f"{label_a}: layer",
                 f"{label_b}: layer", p["title"], vmin=lo, vmax=hi, cbar_label=p.get("orientation", "similarity"),
                 max_ticks=10, fontsize=6)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(_wrap(f"{label_a} (rows) vs {label_b} (columns), {n} measure{'s' if n != 1 else ''}\n{caption}",
                       int(11 * fig.get_figwidth())), fontsize=11)
    return write_figure(fig, path)
