"""Bounds on what one page or API answer shows of a stored result, whatever the store holds (issue #23).

A stored result may come from anyone (``hubcompare results pull``): its summary, key inputs and request are JSON
of any size. A page or an API answer shows at most ``budget`` values of each (:func:`bounded`: lists and objects
cut, long strings shortened, each cut named in ``truncated``), and long tables a page at a time (:func:`page_of`,
``?page=N``). The result's files always hold everything.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_TABLE_ROWS", "ONE_RESULT_BUDGET", "LIST_BUDGET", "Page", "bounded", "page_of", "page_number"]

ONE_RESULT_BUDGET = 20_000  # values of a summary (key inputs, request) one result's page or API answer shows
LIST_BUDGET = 500  # the same, for each result of a list
MAX_TEXT = 2_000  # characters of one string value
MAX_DEPTH = 12
MAX_TABLE_ROWS = 100  # rows of a table on one page


def bounded(obj, budget: int = ONE_RESULT_BUDGET, path: str = "") -> tuple[object, list[str]]:
    """``obj`` (JSON) with at most ``budget`` values, and where it was cut (``["summary.blocks: 200 of 1,500 items
    shown", ...]``); unchanged when it fits."""
    left = [budget]
    cuts: list[str] = []

    def walk(v, where: str, depth: int):
        left[0] -= 1
        if isinstance(v, str):
            if len(v) > MAX_TEXT:
                cuts.append(f"{where or 'value'}: first {MAX_TEXT:,} of {len(v):,} characters shown")
                return v[:MAX_TEXT] + "…"
            return v
        if not isinstance(v, (dict, list)):
            return v
        if depth >= MAX_DEPTH:
            cuts.append(f"{where or 'value'}: nested too deep to show")
            return None
        items = list(v.items()) if isinstance(v, dict) else list(enumerate(v))
        kept = []
        for k, x in items:
            if left[0] <= 0:
                break
            kept.append((k, walk(x, f"{where}.{k}" if isinstance(v, dict) else f"{where}[{k}]", depth + 1)))
        if len(kept) < len(items):
            what = "keys" if isinstance(v, dict) else "items"
            cuts.append(f"{where or 'value'}: {len(kept):,} of {len(items):,} {what} shown")
        return dict(kept) if isinstance(v, dict) else [x for _, x in kept]

    out = walk(obj, path, 0)
    return out, cuts


@dataclass
class Page:
    """One page of a table: its rows and where they sit (1-based, inclusive)."""

    rows: list
    number: int
    pages: int
    total: int

    @property
    def first(self) -> int:
        return (self.number - 1) * MAX_TABLE_ROWS + 1 if self.total else 0

    @property
    def last(self) -> int:
        return min(self.total, self.number * MAX_TABLE_ROWS)


def page_number(text: str | None) -> int:
    """``?page=N`` (1 when absent or not a positive whole number)."""
    return int(text) if isinstance(text, str) and text.isdigit() and 0 < len(text) < 7 and int(text) > 0 else 1


def page_of(rows: list, number: int) -> Page:
    """Rows ``number``'s page holds (the last page when ``number`` is past it)."""
    pages = max(1, -(-len(rows) // MAX_TABLE_ROWS))
    number = min(max(1, number), pages)
    return Page(rows[(number - 1) * MAX_TABLE_ROWS: number * MAX_TABLE_ROWS], number, pages, len(rows))
