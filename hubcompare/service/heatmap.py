"""The data of the result page's SVG heatmap: one rectangle per layer pair, coloured as the PNG figures are.

Drawn like :mod:`hubcompare.similarity.plots` (magma, 0 to 1, origin lower: model A's first layer at the bottom,
stage boundaries as white lines, blocks outlined in cyan, undefined cells grey), but as SVG elements the page can
hover: each ``rect.cell`` carries the two layer names and CKA +- SE as data attributes (the numbers of the stored
JSON, unrounded). Templates only place what is computed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Cell", "Heatmap", "build_heatmap", "magma"]

# matplotlib's magma at 17 evenly spaced points (interpolated linearly between them; close enough for a page)
MAGMA = ["#000004", "#0a0822", "#1d1147", "#36106b", "#51127c", "#6a1c81", "#832681", "#9c2e7f", "#b73779", "#d0416f",
         "#e75263", "#f56b5c", "#fc8961", "#fea772", "#fec488", "#fde2a3", "#fcfdbf"]
UNDEFINED = "#bbbbbb"
PLOT_PX = 560  # the matrix's side, in pixels
MAX_CELL_PX = 48  # the longer side's cells at most this
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP, MARGIN_RIGHT = 170, 150, 10, 10
MAX_TICKS = 40


def magma(value: float | None) -> str:
    """The colour of a CKA value in [0, 1] (clipped); grey for an undefined one."""
    if value is None:
        return UNDEFINED
    x = min(max(float(value), 0.0), 1.0) * (len(MAGMA) - 1)
    i = min(int(x), len(MAGMA) - 2)
    t = x - i
    a, b = MAGMA[i], MAGMA[i + 1]
    rgb = [round(int(a[k:k + 2], 16) * (1 - t) + int(b[k:k + 2], 16) * t) for k in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


@dataclass
class Cell:
    x: float
    y: float
    a: str  # layer of model A (row)
    b: str  # layer of model B (column)
    cka: float | None
    se: float | None
    fill: str

    @property
    def cka_text(self) -> str:
        return "undefined" if self.cka is None else repr(self.cka)

    @property
    def se_text(self) -> str:
        return "" if self.se is None else repr(self.se)


@dataclass
class Heatmap:
    title: str
    label_a: str
    label_b: str
    size: float  # a cell's width, px
    size_h: float  # a cell's height, px
    width: float
    height: float
    cells: list[Cell]
    ticks_a: list[tuple[float, str]]  # (y, layer name) along the left side
    ticks_b: list[tuple[float, str]]  # (x, layer name) along the bottom
    lines_a: list[float] = field(default_factory=list)  # y of model A's stage boundaries
    lines_b: list[float] = field(default_factory=list)  # x of model B's stage boundaries
    blocks: list[dict] = field(default_factory=list)  # {x, y, w, h, label}
    legend: list[tuple[float, str]] = field(default_factory=list)  # (value, colour) stops, for the colour bar
    left: float = MARGIN_LEFT
    top: float = MARGIN_TOP
    plot_w: float = 0.0
    plot_h: float = 0.0


def _tick_every(n: int) -> int:
    return max(1, -(-n // MAX_TICKS))


def _short(name: str, limit: int = 26) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def build_heatmap(cka_json: dict, *, title: str = "", blocks: list[dict] | None = None) -> Heatmap:
    """The heatmap of a ``CKAResult.to_json()`` dict; ``blocks``: ``BlockReport.to_json()["blocks"]`` to outline."""
    layers_a, layers_b = list(cka_json["layers_a"]), list(cka_json["layers_b"])
    values, errors = cka_json["cka"], cka_json.get("se") or [[None] * len(layers_b) for _ in layers_a]
    n_a, n_b = len(layers_a), len(layers_b)
    # the plot is a square, as the figures are (aspect "auto"); a small matrix gets a smaller one
    side = min(PLOT_PX, MAX_CELL_PX * max(n_a, n_b, 1))
    size, size_h = side / max(n_b, 1), side / max(n_a, 1)
    plot_w, plot_h = size * n_b, size_h * n_a
    left, top = MARGIN_LEFT, MARGIN_TOP

    def y_of(i: float) -> float:  # origin lower: row 0 at the bottom
        return top + (n_a - 1 - i) * size_h

    cells = []
    for i, a in enumerate(layers_a):
        for j, b in enumerate(layers_b):
            v, se = values[i][j], errors[i][j]
            cells.append(Cell(round(left + j * size, 3), round(y_of(i), 3), a, b, v, se, magma(v)))
    every_a, every_b = _tick_every(n_a), _tick_every(n_b)
    ticks_a = [(round(y_of(i) + size_h / 2, 3), _short(a)) for i, a in enumerate(layers_a) if i % every_a == 0]
    ticks_b = [(round(left + (j + 0.5) * size, 3), _short(b)) for j, b in enumerate(layers_b) if j % every_b == 0]
    lines_a = [round(top + (n_a - b) * size_h, 3) for b in cka_json.get("stage_boundaries_a", []) if 0 < b < n_a]
    lines_b = [round(left + b * size, 3) for b in cka_json.get("stage_boundaries_b", []) if 0 < b < n_b]
    outlined = []
    for blk in blocks or []:
        start, stop = int(blk["start"]), int(blk["stop"])
        span = stop - start + 1
        outlined.append({"x": round(left + start * size, 3), "y": round(y_of(stop), 3), "w": round(span * size, 3),
                         "h": round(span * size_h, 3),
                         "label": f"block {start}-{stop} ({span} layers, mean CKA {blk.get('mean_cka', float('nan')):.3f})"})
    legend = [(k / 10, magma(k / 10)) for k in range(11)]
    return Heatmap(title=title, label_a=str(cka_json.get("label_a") or cka_json.get("ref_a") or "A"),
                   label_b=str(cka_json.get("label_b") or cka_json.get("ref_b") or "B"), size=round(size, 3),
                   size_h=round(size_h, 3),
                   width=left + plot_w + MARGIN_RIGHT + 70, height=top + plot_h + MARGIN_BOTTOM, cells=cells,
                   ticks_a=ticks_a, ticks_b=ticks_b, lines_a=lines_a, lines_b=lines_b, blocks=outlined, legend=legend,
                   left=left, top=top, plot_w=round(plot_w, 3), plot_h=round(plot_h, 3))
