"""The probes' and deletion's figures: accuracy per layer (pre- and post-add lines) and the paper's Figure 5,
stage boundaries drawn, detected blocks shaded. matplotlib's object API (no pyplot state); files written
atomically, as PNG, PDF or SVG (the path's suffix says which: similarity.plots.write_figure)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..similarity.plots import write_figure
from .deletion import DeletionResult
from .linear import ProbeResult
from .summary import block_layer_lists, probe_fit_text

__all__ = ["plot_probes", "plot_deletion", "block_layer_lists"]

MAX_NAMED_TICKS = 40
SHADE = dict(color="#00b8d4", alpha=0.18, lw=0)


def _spans(positions: dict[str, float], blocks: Sequence) -> list[tuple[float, float]]:
    """(first, last) positions of each block's layers that are on this axis."""
    spans = []
    for names in block_layer_lists(blocks):
        xs = [positions[n] for n in names if n in positions]
        if xs:
            spans.append((min(xs), max(xs)))
    return spans


def _ticks(ax, names: Sequence[str]) -> None:
    n = len(names)
    if n <= MAX_NAMED_TICKS:
        ax.set_xticks(np.arange(n), list(names), rotation=90, fontsize=7 if n > 16 else 8)
    else:
        step = int(np.ceil(n / 20))
        ax.set_xticks(np.arange(0, n, step), [str(i) for i in range(0, n, step)], fontsize=8)


def plot_probes(result: ProbeResult, path: str | Path, blocks: Sequence | None = None) -> Path:
    """Probe test accuracy per layer: block outputs (after the add) and residual branches (before it) as two lines,
    the model's own accuracy, stage boundaries, detected blocks shaded (default: the result's)."""
    names, acc = result.names, np.array(result.test_accuracy, dtype=float)
    kinds = [r["kind"] for r in result.layers]
    n = len(names)
    fig = Figure(figsize=(min(16.0, max(7.0, 0.2 * n + 4)), 5.2), layout="constrained")
    ax = fig.add_subplot()
    spans = _spans({name: i for i, name in enumerate(names)}, result.blocks if blocks is None else blocks)
    for lo, hi in spans:
        ax.axvspan(lo - 0.5, hi + 0.5, **SHADE)
    if spans:
        ax.axvspan(np.nan, np.nan, label="detected block", **SHADE)
    x = np.arange(n)
    branch = np.array([k == "branch" for k in kinds])
    if branch.any():
        ax.plot(x[~branch], acc[~branch], "o-", ms=3.5, color="#1f4e9c", label="after the add (block output; stem, pool)")
        ax.plot(x[branch], acc[branch], "s--", ms=3.5, color="#d9480f", label="before the add (residual branch)")
    else:
        ax.plot(x, acc, "o-", ms=3.5, color="#1f4e9c", label="layer")
    if result.model_test_accuracy is not None:
        ax.axhline(result.model_test_accuracy, color="black", ls=":", lw=1,
                   label=f"the model's own accuracy {result.model_test_accuracy:.3f}")
    for b in result.boundaries:
        ax.axvline(b - 0.5, color="grey", lw=0.8)
    ax.set_xlim(-0.5, n - 0.5)
    _ticks(ax, names)
    ax.set_ylabel("linear probe test accuracy")
    ax.legend(loc="lower right", fontsize=8)
    s = result.settings
    ax.set_title(f"Linear probes: {result.ref}\n{s['test']['name']} test ({s['test']['num_examples']} examples), probes "
                 f"{probe_fit_text(result)}, pooling {s['pooling']}", fontsize=10)
    return write_figure(fig, path)


def plot_deletion(result: DeletionResult, path: str | Path, blocks: Sequence | None = None) -> Path:
    """The paper's Figure 5: test accuracy after deleting a residual block and every later block of its stage (one
    line per stage, at the first deleted block), the full model's accuracy, stage boundaries, detected blocks shaded."""
    rb = result.residual_blocks
    pos = {b["layer"]: i for i, b in enumerate(rb)}
    fig = Figure(figsize=(min(16.0, max(7.0, 0.22 * len(rb) + 4)), 5.2), layout="constrained")
    ax = fig.add_subplot()
    spans = _spans(pos, result.blocks if blocks is None else blocks)
    for lo, hi in spans:
        ax.axvspan(lo - 0.5, hi + 0.5, **SHADE)
    if spans:
        ax.axvspan(np.nan, np.nan, label="detected block", **SHADE)
    colors = ["#1f4e9c", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285"]
    for k, st in enumerate(result.stages):
        pts = sorted((pos[s["blocks"][0]], s["accuracy"]) for s in st["steps"] if s["blocks"])
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-", ms=4, color=colors[k % len(colors)], label=f"stage {st['stage']}")
        if k:
            ax.axvline(pos[st["blocks"][0]["layer"]] - 0.5, color="grey", lw=0.8)
    kept = [pos[b["layer"]] for b in rb if not b["deletable"]]
    if kept:
        ax.plot(kept, [0.0] * len(kept), "x", color="grey", ms=7, clip_on=False, label="projection shortcut (kept)")
    ax.axhline(result.full_accuracy, color="black", ls=":", lw=1, label=f"full model {result.full_accuracy:.3f}")
    ax.set_xlim(-0.5, len(rb) - 0.5)
    ax.set_ylim(0, 1.02)
    _ticks(ax, [b["layer"] for b in rb])
    ax.set_xlabel("first deleted block (it and every later block of its stage are deleted)")
    ax.set_ylabel("test accuracy")
    ax.legend(loc="best", fontsize=8)
    d = result.settings["dataset"]
    ax.set_title(f"Block deletion: {result.ref}\n{d['name']} {d['split']}, {result.settings['num_examples']} examples, "
                 "identity path kept, no retraining", fontsize=10)
    return write_figure(fig, path)
