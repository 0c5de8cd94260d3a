"""What every CLI module shares: the rich consoles, typed-error handling, common options."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import HubcompareError

console = Console()
err_console = Console(stderr=True)

RunDir = Annotated[Path, typer.Argument(help="A checkpoint folder written by `hubcompare train`.")]
DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Local data: a torchvision root, a folder with train.npz/test.npz, or an image folder."),
]
Threads = Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads (default: torch's choice).")]


def friendly_errors(fn):
    """Turn hubcompare's typed errors into one red line and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HubcompareError as e:
            err_console.print(f"[bold red]Error ({type(e).__name__}):[/] {escape(str(e))}", soft_wrap=True, highlight=False)
            raise typer.Exit(code=2) from None

    return wrapper


def warn(warnings: list[str]) -> None:
    """Print each distinct warning of a result once, in yellow, on stderr."""
    for w in dict.fromkeys(warnings):
        err_console.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True, highlight=False)


def wrote(files) -> None:
    """The closing line of every command that writes results: which files it wrote."""
    console.print(f"[bold green]Wrote[/] {', '.join(map(str, files))}")


def slug(ref: str) -> str:
    """A file-name-safe short form of a model reference or label (for default output folders)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", ref.split(":", 1)[-1]).strip("_")[-60:] or "model"


def set_threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
