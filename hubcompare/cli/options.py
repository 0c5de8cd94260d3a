"""What every CLI module shares: the rich consoles, common options, and how errors and results are printed."""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import HubcompareError
from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .output import plural

class CliConsole(Console):
    """A console that never crops a printed line: a table whose names are wider than the terminal prints them
    whole (the terminal wraps the line; a pipe keeps it), instead of cutting them at the terminal's width."""

    def print(self, *objects, crop: bool = False, **kwargs) -> None:
        super().print(*objects, crop=crop, **kwargs)


console = CliConsole()
err_console = CliConsole(stderr=True)

RunDir = Annotated[Path, typer.Argument(help="A checkpoint folder written by `hubcompare train`.")]
DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Local data: a torchvision root, a folder with train.npz/test.npz, or an image folder."),
]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads (default: the idle cores this process may use, 1 for a small model).")]
MaxParams = Annotated[int, typer.Option(
    "--max-params", min=1,
    help="Refuse a model whose config.json describes more parameters (+ buffers) than this, checked before "
         f"anything is built (default {DEFAULT_MAX_PARAMS:,}: every CIFAR ResNet up to depth 164 x width 10 fits).")]
Device = Annotated[str, typer.Option(
    "--device",
    help="Where the models run: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps. Results record it.")]
SEED_MAX = 2**63 - 1  # torch.manual_seed takes a 64-bit integer

# library parameter (HubcompareError.params) -> how the command line spells it
OPTION_FOR_PARAM = {
    "backend": "--backend",
    "batch_size": "--batch-size",
    "cpus_per_run": "--cpus-per-run",
    "data_dir": "--data-dir",
    "data": "--data",
    "dataset": "--dataset",
    "depth": "--depth",
    "epochs": "--epochs",
    "device": "--device",
    "format": "--format",
    "gpus_per_run": "--gpus-per-run",
    "grid": "the GRID file",
    "host": "--host",
    "token": "--token ($HUBCOMPARE_TOKEN)",
    "max_examples": "--max-examples",
    "layers": "--layers (`hubcompare layers REF` lists a model's layers)",
    "max_bytes": "--max-memory",
    "l2_grid": "--l2",
    "validation_fraction": "--validation-fraction",
    "train_examples": "--train-examples",
    "max_feature_bytes": "--memory-gb",
    "pool": "--pool",
    "max_iter": "--max-iter",
    "max_params": "--max-params",
    "max_retries": "--max-retries",
    "measures": "--measure (`hubcompare measures` lists them)",
    "null_side": "--null-side",
    "num_examples": "--examples",
    "out": "--out",
    "overwrite": "--overwrite",
    "passes": "--passes",
    "pc_examples": "--pc-examples",
    "port": "--port",
    "ray_address": "--ray-address",
    "replace": "--replace",
    "width": "--width",
    "threads": "--threads",
    "token_file": "--token-file",
    "user": "--user",
    "workers": "--workers",
}


# --- option callbacks: refuse a bad value before any work is done ------------------------------
def finite(value: Optional[float]) -> Optional[float]:
    """For float options: refuse inf and nan (click's ``min``/``max`` let nan through)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number.")
    return value


def fraction(value: Optional[str]) -> Optional[str]:
    """For data-fraction options: 1, 0.25 or 1/4, in (0, 1]."""
    if value is None:
        return value
    try:
        frac = Fraction(value.strip())
    except (ValueError, ZeroDivisionError):
        raise typer.BadParameter(f"{value!r} is not a fraction: use e.g. 1, 0.25 or 1/16.") from None
    if not 0 < frac <= 1:
        raise typer.BadParameter(f"{value!r} is not in (0, 1]: use e.g. 1, 1/4 or 1/16.")
    return value


def seed_range(value: Optional[int]) -> Optional[int]:
    """For --seed: 0 to 2**63 - 1, checked here so that --help shows "x>=0", not the 19-digit bound."""
    if value is not None and value > SEED_MAX:
        raise typer.BadParameter(f"{value} is too large: give a seed from 0 to 2**63 - 1.")
    return value


def one_of(*choices: str):
    """For options with a few allowed words."""
    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r}: choose one of {', '.join(choices)}.")
        return value
    return check


FigureFormat = Annotated[str, typer.Option(
    "--format", callback=one_of("png", "pdf", "svg"),
    help="Figure format: png, or pdf / svg (vector, text kept as text, for a paper).")]


def writable_folder(value: Optional[Path]) -> Optional[Path]:
    """For ``--out`` folders: refuse a file, or a place that cannot be created or written, before any work."""
    if value is None:
        return value
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file: give a folder (it is created if missing).")
    existing = value
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise typer.BadParameter(f"{existing} is a file, so {value} cannot be created: give a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"{existing} is not writable: give a folder you can write to.")
    return value


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


def wrote(files, json: bool = False) -> None:
    """The closing lines of every command that writes results: each file it wrote on a line of its own, never broken
    by the terminal's width (so it can be copied). Under ``--json`` (stdout holds only the JSON) on stderr."""
    files = [str(f) for f in files]
    out = err_console if json else console
    out.print(f"[bold green]Wrote[/] {plural(len(files), 'file')}:", highlight=False)
    for f in files:
        out.print(f"  {escape(f)}", soft_wrap=True, highlight=False)


def progress_console(json: bool) -> Console:
    """Where a command's progress, status lines and notes go: stdout, or stderr under ``--json``."""
    return err_console if json else console


def slug(ref: str) -> str:
    """A file-name-safe short form of a model reference or label (for default output folders)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", ref.split(":", 1)[-1]).strip("_")[-60:] or "model"


def pick_device(spec: str):
    """The torch device ``--device`` names, checked before any work (a DeviceError names what is available)."""
    from ..models.devices import resolve_device

    return resolve_device(spec)


def device_label(dev) -> str:
    """How a command names the device it runs on: ``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if dev.type != "cuda":
        return str(dev)
    import torch

    return f"{dev} ({torch.cuda.get_device_name(dev)})"


def set_threads(threads: Optional[int]):
    """torch's CPU threads: ``threads``, else hubcompare's rule (:func:`~hubcompare.models.threads.choose_threads`:
    the cores idle now; torch's own default, one per core, stalls when another process holds a core). Returns the
    choice. The count is put back when the command ends (a command run in-process, as tests do, leaves none behind)."""
    import click
    import torch

    from ..models.threads import set_torch_threads

    ctx, previous = click.get_current_context(silent=True), torch.get_num_threads()
    if ctx is not None:
        ctx.call_on_close(lambda: torch.set_num_threads(previous))
    return set_torch_threads(threads)
