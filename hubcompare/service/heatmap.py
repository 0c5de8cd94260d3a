"""The data of the result page's SVG heatmap: one rectangle per layer pair, coloured as the PNG figures are.

Drawn like :mod:`hubcompare.similarity.plots` (magma, 0 to 1, origin lower: model A's first layer at the bottom,
stage boundaries as white lines, blocks outlined in cyan, undefined cells grey), but as SVG elements the page can
hover: each ``rect.cell`` carries the two layer names and CKA +- SE as data attributes (the numbers of the stored
JSON, unrounded). Templates only place what is computed here.

Bounded whatever the store holds (issue #23): a matrix with more than ``MAX_CELLS`` layers a side is drawn
block-averaged, at most ``MAX_CELLS`` x ``MAX_CELLS`` cells, each the mean CKA of a block of consecutive layer
pairs (its hover: the first and last layer of each side, the mean, the largest SE, min and max, how many pairs);
the page says so. Stage lines and block outlines keep their layer positions; both are capped in number too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ServiceRequestError

__all__ = ["Cell", "Heatmap", "build_heatmap", "magma"]

# matplotlib's magma at 17 evenly spaced points (interpolated linearly between them; close enough for a page)
MAGMA = ["#000004", "#0a0822", "#1d1147", "#36106b", "#51127c", "#6a1c81", "#832681", "#9c2e7f", "#b73779", "#d0416f",
         "#e75263", "#f56b5c", "#fc8961", "#fea772", "#fec488", "#fde2a3", "#fcfdbf"]
UNDEFINED = "#bbbbbb"
PLOT_PX = 560  # the matrix's side, in pixels
MAX_CELL_PX = 48  # the longer side's cells at most this
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP, MARGIN_RIGHT = 170, 150, 10, 10
MAX_TICKS = 40
MAX_CELLS = 64  # cells a side at most: a larger matrix is block-averaged (at most 4,096 cells, ~1 MB of SVG)
MAX_OUTLINES = 200  # stage lines a side, block outlines: at most this many drawn


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
    pairs: int = 1  # layer pairs this cell stands for (1 unless the map is downsampled)
    low: float | None = None  # their smallest and largest CKA (downsampled cells only)
    high: float | None = None

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
    layers: tuple[int, int] = (0, 0)  # the matrix's layers (rows, columns), whatever is drawn
    measure: str = "CKA"  # what the values are (the hover text and the figure's label say it)
    per_cell: tuple[int, int] = (1, 1)  # layers a cell stands for (rows, columns): (1, 1) unless downsampled

    @property
    def downsampled(self) -> bool:
        return self.per_cell != (1, 1)


def _tick_every(n: int) -> int:
    return max(1, -(-n // MAX_TICKS))


def _short(name: str, limit: int = 26) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _matrix(values, n_a: int, n_b: int, what: str) -> np.ndarray:
    """A stored n_a x n_b matrix as floats (null: NaN); anything else is one readable error, never a 500."""
    try:
        m = np.array(values, dtype=float)
    except (TypeError, ValueError):
        m = None
    if m is None or m.shape != (n_a, n_b):
        raise ServiceRequestError(f"the stored {what} is not a {n_a} x {n_b} matrix of numbers: download the file instead")
    return m


def _bins(n: int) -> tuple[int, np.ndarray]:
    """Layers per cell (``k``) and each cell's first layer: ``n`` layers in at most MAX_CELLS cells."""
    k = max(1, -(-n // MAX_CELLS))
    return k, np.arange(0, n, k) if n else np.zeros(0, dtype=int)


def _pool(m: np.ndarray, starts_a: np.ndarray, starts_b: np.ndarray, how: str) -> np.ndarray:
    """Block-wise mean / max / min of the defined (non-NaN) entries; NaN where a block has none."""
    defined = ~np.isnan(m)
    if how == "mean":
        total = np.add.reduceat(np.add.reduceat(np.where(defined, m, 0.0), starts_a, axis=0), starts_b, axis=1)
        count = np.add.reduceat(np.add.reduceat(defined.astype(np.int64), starts_a, axis=0), starts_b, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)
    fill, ufunc = (-np.inf, np.maximum) if how == "max" else (np.inf, np.minimum)
    out = ufunc.reduceat(ufunc.reduceat(np.where(defined, m, fill), starts_a, axis=0), starts_b, axis=1)
    return np.where(np.isinf(out), np.nan, out)


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def build_heatmap(cka_json: dict, *, title: str = "", blocks: list[dict] | None = None, measure: str = "CKA",
                  value_range: tuple[float, float] = (0.0, 1.0)) -> Heatmap:
    """The heatmap of a ``CKAResult.to_json()`` dict (or any measure's matrix in its ``cka`` field: ``measure`` names
    it, ``value_range`` spans the colour scale); ``blocks``: ``BlockReport.to_json()["blocks"]`` to outline.
    Over ``MAX_CELLS`` layers a side it is block-averaged (see the module's doc)."""
    lo, hi = (float(value_range[0]), float(value_range[1])) if value_range[1] > value_range[0] else (0.0, 1.0)

    def colour(v: float | None) -> str:
        return magma(None if v is None else (v - lo) / (hi - lo))

    layers_a, layers_b = [str(x) for x in cka_json["layers_a"]], [str(x) for x in cka_json["layers_b"]]
    n_a, n_b = len(layers_a), len(layers_b)
    values = _matrix(cka_json["cka"], n_a, n_b, "CKA")
    errors = _matrix(cka_json["se"], n_a, n_b, "SE") if cka_json.get("se") else np.full((n_a, n_b), np.nan)
    k_a, starts_a = _bins(n_a)
    k_b, starts_b = _bins(n_b)
    rows, cols = len(starts_a), len(starts_b)
    # the plot is a square, as the figures are (aspect "auto"); a small matrix gets a smaller one
    side = min(PLOT_PX, MAX_CELL_PX * max(rows, cols, 1))
    unit, unit_h = side / max(n_b, 1), side / max(n_a, 1)  # px per layer
    size, size_h = unit * k_b, unit_h * k_a  # a cell (the last of a side may be narrower)
    plot_w, plot_h = unit * n_b, unit_h * n_a
    left, top = MARGIN_LEFT, MARGIN_TOP

    def y_of(i: float) -> float:  # origin lower: layer 0 at the bottom; the top edge of layer i's row
        return top + (n_a - 1 - i) * unit_h

    cells = []
    if (k_a, k_b) == (1, 1):
        for i, a in enumerate(layers_a):
            for j, b in enumerate(layers_b):
                v, se = _num(values[i, j]), _num(errors[i, j])
                cells.append(Cell(round(left + j * size, 3), round(y_of(i), 3), a, b, v, se, colour(v)))
    elif rows and cols:
        mean, low, high = (_pool(values, starts_a, starts_b, how) for how in ("mean", "min", "max"))
        worst_se = _pool(errors, starts_a, starts_b, "max")
        for r, i0 in enumerate(starts_a):
            i1 = min(int(i0) + k_a, n_a) - 1
            a = f"{layers_a[i0]} … {layers_a[i1]}" if i1 > i0 else layers_a[i0]
            for c, j0 in enumerate(starts_b):
                j1 = min(int(j0) + k_b, n_b) - 1
                b = f"{layers_b[j0]} … {layers_b[j1]}" if j1 > j0 else layers_b[j0]
                v = _num(mean[r, c])
                cells.append(Cell(round(left + j0 * unit, 3), round(y_of(i1), 3), a, b, v, _num(worst_se[r, c]), colour(v),
                                  pairs=(i1 - i0 + 1) * (j1 - j0 + 1), low=_num(low[r, c]), high=_num(high[r, c])))
    every_a, every_b = _tick_every(rows), _tick_every(cols)
    ticks_a = [(round(y_of(min(int(i) + k_a, n_a) - 1) + (min(k_a, n_a - int(i)) * unit_h) / 2, 3), _short(layers_a[i]))
               for r, i in enumerate(starts_a) if r % every_a == 0]
    ticks_b = [(round(left + (int(j) + min(k_b, n_b - int(j)) / 2) * unit, 3), _short(layers_b[j]))
               for c, j in enumerate(starts_b) if c % every_b == 0]
    lines_a = [round(top + (n_a - b) * unit_h, 3) for b in _boundaries(cka_json.get("stage_boundaries_a"), n_a)]
    lines_b = [round(left + b * unit, 3) for b in _boundaries(cka_json.get("stage_boundaries_b"), n_b)]
    outlined = []
    for blk in (blocks or [])[:MAX_OUTLINES]:
        try:
            start, stop = int(blk["start"]), int(blk["stop"])
            mean_cka = float(blk.get("mean_cka", float("nan")))
        except (TypeError, ValueError, KeyError):
            continue
        if not 0 <= start <= stop < max(n_a, n_b):
            continue
        span = stop - start + 1
        outlined.append({"x": round(left + start * unit, 3), "y": round(y_of(stop), 3), "w": round(span * unit, 3),
                         "h": round(span * unit_h, 3), "label": f"block {start}-{stop} ({span} layers, mean CKA {mean_cka:.3f})"})
    legend = [(lo + (hi - lo) * k / 10, magma(k / 10)) for k in range(11)]
    return Heatmap(title=title, label_a=str(cka_json.get("label_a") or cka_json.get("ref_a") or "A"),
                   label_b=str(cka_json.get("label_b") or cka_json.get("ref_b") or "B"), size=round(size, 3),
                   size_h=round(size_h, 3),
                   width=left + plot_w + MARGIN_RIGHT + 70, height=top + plot_h + MARGIN_BOTTOM, cells=cells,
                   ticks_a=ticks_a, ticks_b=ticks_b, lines_a=lines_a, lines_b=lines_b, blocks=outlined, legend=legend,
                   left=left, top=top, plot_w=round(plot_w, 3), plot_h=round(plot_h, 3), layers=(n_a, n_b),
                   per_cell=(k_a, k_b), measure=measure)


def _boundaries(found, n: int) -> list[int]:
    """A side's stage boundaries inside the matrix, as whole layer indices, at most MAX_OUTLINES of them."""
    if not isinstance(found, list):
        return []
    out = sorted({b for b in found if isinstance(b, int) and not isinstance(b, bool) and 0 < b < n})
    return out[:MAX_OUTLINES]
