"""How results reach the terminal: tables that never cut what a user copies, --json for scripts, plurals."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from ..provenance import strict_json

Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts) instead of tables.")]


def table(*columns: str, **kwargs) -> Table:
    """A rich table whose cells wrap (fold) instead of ending in dots at 80 columns, so nothing is cut."""
    t = Table(**kwargs)
    for c in columns:
        add_column(t, c)
    return t


def add_column(t: Table, header: str, **kwargs) -> None:
    """Add a column that folds long values (names, references, paths) onto more lines rather than truncate them."""
    kwargs.setdefault("overflow", "fold")
    t.add_column(header, **kwargs)


def print_json(obj: Any) -> None:
    """The result as strict JSON (NaN and infinities as null) on stdout, with nothing else mixed in."""
    sys.stdout.write(json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 epoch``, ``2 epochs``, ``1 pass``, ``3 passes``."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"
