"""What every CLI module shares: the rich consoles, common options, and how errors and results are printed."""

from __future__ import annotations

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

# library parameter (HubcompareError.params) -> how the command line spells it
OPTION_FOR_PARAM = {
    "batch_size": "--batch-size",
    "data_dir": "--data-dir",
    "dataset": "--dataset",
    "layers": "--layers (`hubcompare layers REF` lists a model's layers)",
    "null_side": "--null-side",
    "num_examples": "--examples",
    "out": "--out",
    "overwrite": "--overwrite",
    "passes": "--passes",
    "replace": "--replace",
}


def error_line(e: HubcompareError) -> str:
    """The one line (rich markup) a typed error becomes: its class, its message, and the command-line
    options that set the arguments it asks to change."""
    options = [OPTION_FOR_PARAM[p] for p in e.params if p in OPTION_FOR_PARAM]
    hint = f" [dim](command line: {escape(', '.join(options))})[/]" if options else ""
    return f"[bold red]Error ({type(e).__name__}):[/] {escape(str(e))}{hint}"


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
