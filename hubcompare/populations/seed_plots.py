"""The across-seeds figure: per layer, how similar seeds are within each side and across the sides, blocks shaded.

One panel per side on its own layers (forward order; stage boundaries as grey lines): the within-side mean over
seed pairs and the across-sides mean (against the other side's layer at the same relative depth), each with a
± sd band; each layer shaded by the share of the side's models whose block covers it. A third panel is the
inside/outside summary (mean ± sd over (pair, layer) values per class). Matplotlib's object API; written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..similarity.plots import write_figure
from .seeds import CLASSES, SeedsResult

__all__ = ["plot_across_seeds"]

MAX_NAMED_TICKS = 30
COLOURS = {"within": "#1f77b4", "across": "#d62728", "block": "#00b8d4"}


def _band(ax, x, stats, colour: str, label: str, dashed: bool = False) -> None:
    mean = np.array([s.mean for s in stats])
    sd = np.nan_to_num(np.array([s.sd for s in stats]))
    ax.plot(x, mean, color=colour, ls="--" if dashed else "-", marker="o", ms=3, lw=1.5, label=label)
    ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.18, lw=0)


def _side_panel(ax, result: SeedsResult, key: str) -> None:
    side, other = (result.a, result.b) if key == "a" else (result.b, result.a)
    within, across = result.sets[f"within_{key}"], result.sets[f"across_on_{key}"]
    n = len(side.layers)
    x = np.arange(n)
    share = side.inside.mean(0)
    for l in np.flatnonzero(share > 0):
        ax.axvspan(l - 0.5, l + 0.5, color=COLOURS["block"], alpha=0.1 + 0.35 * share[l], lw=0)
    for b in side.boundaries:
        ax.axvline(b - 0.5, color="grey", lw=0.8)
    m = len(side.models)
    if within.pairs:
        _band(ax, x, within.per_layer(), COLOURS["within"], f"within {side.label}: {len(within.pairs)} seed pair(s) of {m}")
    _band(ax, x, across.per_layer(), COLOURS["across"], f"across: vs {other.label} at the same relative depth "
          f"({len(across.pairs)} pairs)", dashed=True)
    if n <= MAX_NAMED_TICKS:
        ax.set_xticks(x, side.layers, rotation=90, fontsize=7)
    else:
        step = int(np.ceil(n / 20))
        ax.set_xticks(x[::step], [str(i) for i in x[::step]], fontsize=8)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(min(0.0, np.nanmin(np.append(within.values, across.values)) if within.values.size else 0.0), 1.02)
    ax.set_ylabel("CKA (mean ± sd over pairs)")
    blocks = sum(bool(b) for b in side.blocks)
    ax.set_title(f"{side.label}: {m} model(s), {blocks} with a block (shaded: share of its models whose block covers the layer)",
                 fontsize=10)
    ax.legend(loc="lower left", fontsize=8)


def _summary_panel(ax, result: SeedsResult) -> None:
    names = [k for k in ("within_a", "within_b", "across_on_a", "across_on_b")]
    labels = {"within_a": f"within {result.a.label}", "within_b": f"within {result.b.label}",
              "across_on_a": f"across, on {result.a.label}'s layers", "across_on_b": f"across, on {result.b.label}'s layers"}
    width = 0.8 / len(CLASSES)
    colours = {"outside": "#555555", "partly": "#80cbc4", "inside": COLOURS["block"]}
    for c, klass in enumerate(CLASSES):
        stats = [result.sets[k].by_class()[klass] for k in names]
        mean = np.array([s.mean for s in stats])
        sd = np.nan_to_num(np.array([s.sd for s in stats]))
        pos = np.arange(len(names)) + (c - 1) * width
        ax.bar(pos, np.nan_to_num(mean), width, yerr=sd, color=colours[klass], capsize=2,
               label={"outside": "outside both blocks", "partly": "one layer in its block", "inside": "both in their blocks"}[klass])
        for p, s in zip(pos, stats):
            ax.text(p, 0.02, f"n={s.n}", rotation=90, ha="center", va="bottom", fontsize=6, color="white" if s.n else "black")
    ax.set_xticks(np.arange(len(names)), [labels[k] for k in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("CKA over (pair, layer) values")
    blocks = sum(bool(b) for side in (result.a, result.b) for b in side.blocks)
    ax.set_title("Inside vs outside each model's block" + ("" if blocks else ": no model has a block, every value is outside"),
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper right")


def plot_across_seeds(result: SeedsResult, path: str | Path) -> Path:
    """The per-layer figure (one panel per side) and the inside/outside summary, at ``path`` (its suffix: png, pdf, svg)."""
    fig = Figure(figsize=(13, 13), layout="constrained")
    axes = fig.subplots(3, 1, height_ratios=[1, 1, 0.8])
    _side_panel(axes[0], result, "a")
    _side_panel(axes[1], result, "b")
    _summary_panel(axes[2], result)
    p = result.provenance
    d = p.get("dataset", {})
    fig.suptitle(f"Across seeds: {result.a.label} vs {result.b.label}\n{d.get('name', '?')} {d.get('split', '')}, "
                 f"{p.get('num_examples', '?')} examples, batch {p.get('batch_size', '?')}, {p.get('passes', '?')} pass(es)",
                 fontsize=12)
    return write_figure(fig, path)  # PNG, PDF or SVG, as the suffix says
