"""The grounding figure: the measure x test table coloured pass / fail, and the principal-component removal curves."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..similarity.plots import write_figure
from .run import Grounding

__all__ = ["plot_grounding"]

PASS, FAIL, NONE = "#b7e1b0", "#f4b6b0", "#dddddd"


def plot_grounding(g: Grounding, path: str | Path, caption: str = "") -> Path:
    """Left: each measure's score on each test (green: passed, red: failed, grey: not defined), with the chance level
    under each test's name. Middle and right: the middle probed layer as its top principal components, then its
    low-variance ones, are removed: each measure (original vs removed) and the probe's accuracy (dashed)."""
    tests, rows = g.tests, g.rows()
    fig = Figure(figsize=(17, 1.2 + 0.42 * len(rows) + 1.8), layout="constrained")
    table, top, low = fig.subplots(1, 3, width_ratios=[1.35, 1, 1])
    table.set_xlim(0, len(tests))
    table.set_ylim(len(rows), 0)
    for r, row in enumerate(rows):
        for c, t in enumerate(tests):
            s = row["tests"][t]
            colour = NONE if s["score"] is None else (PASS if s["passed"] else FAIL)
            table.add_patch(_cell(c, r, colour))
            table.text(c + 0.5, r + 0.5, "n/a" if s["score"] is None else f"{s['score']:.2f}", ha="center",
                       va="center", fontsize=9)
    chance = {t: rows[0]["tests"][t]["chance"] for t in tests} if rows else {}
    table.set_xticks(np.arange(len(tests)) + 0.5, [f"{t}\n(chance {chance[t]:.2f})" for t in tests], fontsize=8)
    table.set_yticks(np.arange(len(rows)) + 0.5, [f"{row['measure']}  ({row['passed']}/{len(tests)})" for row in rows],
                     fontsize=8)
    table.xaxis.tick_top()
    table.tick_params(length=0)
    for side in table.spines.values():
        side.set_visible(False)
    table.set_title("score per test (green: passed its rule, red: failed)", fontsize=10)
    layers = list(dict.fromkeys(r.layer for r in g.pc))
    middle = layers[len(layers) // 2] if layers else None
    for ax, end, what in ((top, "top", "top principal components removed"),
                          (low, "low", "principal components kept (the low-variance rest removed)")):
        ladder = next((r for r in g.pc if r.layer == middle and r.end == end), None)
        if ladder is None:
            ax.set_axis_off()
            continue
        _curves(ax, ladder, what, f"{end}-pc removal on {ladder.layer} ({_short(g.real[0]['ref'])})")
    if caption:
        fig.suptitle(textwrap.fill(caption, 150), fontsize=10)
    return write_figure(fig, path)


def _short(ref: str, width: int = 40) -> str:
    return ref if len(ref) <= width else "..." + ref[-(width - 3):]


def _curves(ax, ladder, xlabel: str, title: str) -> None:
    """One ladder: the top one against components removed, the low-variance one against components kept (log 2,
    falling to the right)."""
    x = ladder.removed if ladder.end == "top" else ladder.kept
    for key, values in ladder.values.items():
        ax.plot(x, [np.nan if v is None else v for v in values], marker="o", ms=3, label=key)
    if ladder.end != "top":
        ax.set_xscale("log", base=2)
        ax.invert_xaxis()
    twin = ax.twinx()
    twin.plot(x, ladder.accuracy, "k--", marker="s", ms=3, label="probe accuracy")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("linear probe test accuracy", fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("measure: layer vs layer without them", fontsize=8)
    ax.set_title(title, fontsize=9)
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = twin.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, fontsize=6, loc="lower left")


def _cell(x: int, y: int, colour: str) -> Rectangle:
    return Rectangle((x, y), 1, 1, facecolor=colour, edgecolor="white", linewidth=2)
