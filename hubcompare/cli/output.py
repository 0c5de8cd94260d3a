"""How results reach the terminal: tables that never cut what a user copies, --json for scripts, plurals.

A column whose header names an identifier (``WHOLE_HEADERS``: names, references, keys, layers, repos, runs,
files) never folds, at any width and when piped (``COLUMNS=80 hubcompare registry list | cat`` keeps each
name on one line, so it can be copied or grepped); the other columns fold to make room, or drop when even
that cannot fit.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from ..provenance import strict_json

Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts) instead of tables.")]


WHOLE_HEADERS = frozenset({"name", "reference", "ref", "key", "layer", "repo", "run", "file", "model reference"})


class WholeIdentifierTable(Table):
    """A rich table whose identifier columns are as wide as their longest cell (never folded); the other columns
    fold, and when even folding leaves one narrower than ``MIN_FOLDED`` the rightmost of them are dropped from
    the rendering, which says so in its caption."""

    MIN_FOLDED = 8

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._longest: dict[int, int] = {}  # column index -> widest cell line seen

    def add_row(self, *renderables, **kwargs) -> None:
        super().add_row(*renderables, **kwargs)
        for i, (column, cell) in enumerate(zip(self.columns, renderables)):
            if isinstance(cell, (str, Text)):
                plain = cell.plain if isinstance(cell, Text) else Text.from_markup(cell).plain
                width = max((cell_len(line) for line in plain.splitlines()), default=0)
                self._longest[i] = max(self._longest.get(i, 0), width)
                if _whole(column):
                    column.min_width = max(column.min_width or 0, width)

    def _shown(self, max_width: int) -> tuple[list, int]:
        """The columns that fit ``max_width`` (every identifier column, then the others from the left), and the
        width to render at: wider than ``max_width`` only when the identifiers alone need more."""
        pad = (self.padding[1] + self.padding[3]) if isinstance(self.padding, tuple) and len(self.padding) == 4 else 2
        per_column = pad + (1 if self.box else 0)
        need = {i: (self._longest.get(i, 0) if _whole(c) else
                    min(max(self._longest.get(i, 0), 1), max(cell_len(str(c.header)), self.MIN_FOLDED)))
                for i, c in enumerate(self.columns)}
        shown = list(range(len(self.columns)))

        def width() -> int:
            return sum(max(need[i], cell_len(str(self.columns[i].header)) if _whole(self.columns[i]) else 0) + per_column
                       for i in shown) + (1 if self.box else 0)

        while width() > max_width:
            droppable = [i for i in shown if not _whole(self.columns[i])]
            if not droppable:
                break
            shown.remove(droppable[-1])
        return [self.columns[i] for i in shown], max(max_width, width())

    def __rich_console__(self, console, options):
        shown, width = self._shown(options.max_width)
        if len(shown) == len(self.columns) and width <= options.max_width:
            yield from super().__rich_console__(console, options)
            return
        every, caption = self.columns, self.caption
        dropped = ", ".join(str(c.header) for c in every if c not in shown)
        self.columns = shown
        if dropped:
            self.caption = ((f"{caption} " if caption else "")
                            + f"(not shown at {options.max_width} columns: {dropped}; widen the terminal or use --json)")
        try:
            # identifiers wider than the terminal stay whole: the lines are longer (a terminal wraps them, a pipe
            # keeps them; the CLI's consoles print without cropping)
            yield from super().__rich_console__(console, options.update(width=width, max_width=width))
        finally:
            self.columns, self.caption = every, caption


def _whole(column) -> bool:
    return str(column.header).lower() in WHOLE_HEADERS


def table(*columns: str, **kwargs) -> Table:
    """A rich table whose cells wrap (fold) instead of ending in dots at 80 columns, so nothing is cut;
    identifier columns (``WHOLE_HEADERS``) are never folded at all."""
    t = WholeIdentifierTable(**kwargs)
    for c in columns:
        add_column(t, c)
    return t


def add_column(t: Table, header: str, **kwargs) -> None:
    """Add a column that folds long values onto more lines rather than truncate them; an identifier column
    (names, references, keys, layers) stays whole, on one line."""
    if header.lower() in WHOLE_HEADERS:
        kwargs.setdefault("no_wrap", True)
        kwargs.setdefault("overflow", "ignore")
    kwargs.setdefault("overflow", "fold")
    t.add_column(header, **kwargs)


def print_json(obj: Any) -> None:
    """The result as strict JSON (NaN and infinities as null) on stdout, with nothing else mixed in."""
    sys.stdout.write(json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 epoch``, ``2 epochs``, ``1 pass``, ``3 passes``."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"
