"""CLI command `report`: one model's card, provenance and figures on one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .options import (
    DataDir,
    Device,
    MaxParams,
    Threads,
    console,
    device_label,
    pick_device,
    progress_console,
    set_threads,
    slug,
    warn,
    writable_folder,
    wrote,
)
from .output import Json, print_json
from .passes import (
    Backend,
    BatchSize,
    Dataset,
    Examples,
    Passes,
    RayAddress,
    Seed,
    Split,
    Workers,
    check_backend,
    comparer,
    plan_for,
)


def report_out(value: Optional[Path]) -> Optional[Path]:
    """For ``--out``: a folder (created if missing; the page is report.html in it), as every command takes, or a
    NAME.html file; refused before any work when it cannot be created or written."""
    if value is None:
        return value
    if value.suffix.lower() in (".html", ".htm") and not value.is_dir():
        if value.parent.exists() and not value.parent.is_dir():
            raise typer.BadParameter(f"{value.parent} is a file, so {value} cannot be created in it.")
        writable_folder(value.parent)
        return value
    return writable_folder(value)


OutFile = Annotated[Optional[Path], typer.Option("--out", callback=report_out,
                                                 help="Folder for the page, written as report.html in it (default: "
                                                      "results/report-<model>), or a file name ending in .html.")]


def report(
    ref: Annotated[str, typer.Argument(help="A model reference (checkpoint folder, hf-hub:, timm:, registry name).")],
    out: OutFile = None,
    dataset: Dataset = None,
    split: Split = "test",
    data_dir: DataDir = None,
    batch_size: BatchSize = None,
    passes: Passes = 1,
    seed: Seed = 0,
    examples: Examples = None,
    pc_examples: Annotated[int, typer.Option("--pc-examples", min=2, help="Fixed sample for the exact PC analysis (blocks).")] = 1024,
    probe_examples: Annotated[int, typer.Option("--probe-examples", min=10, help="Training examples the linear probes fit on (a seeded class-stratified subset).")] = 2000,
    json_out: Json = False,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    backend: Backend = "local",
    ray_address: RayAddress = None,
    workers: Workers = None,
) -> None:
    """One self-contained HTML page of a model: its card, provenance, within-model CKA heatmap, block figure and the
    sections plugged in (probes, deletion curves); images embedded, nothing loaded from elsewhere: mail it or attach
    it to a Hub repo."""
    from ..hub.references import resolve_reference
    from ..report.page import build_report, write_report
    from ..report.sections import default_sections
    from ..similarity.engine import CompareModel, comparison_dataset

    check_backend(backend, ray_address, workers)
    con = progress_console(json_out)
    set_threads(threads)
    dev = pick_device(device)
    with con.status(f"loading {escape(ref)}"):
        m = CompareModel.from_resolved(resolve_reference(ref, max_params=max_params), None, ref=ref)
    ds = comparison_dataset([m], dataset, split, data_dir)
    plan = plan_for(ds, examples, batch_size, passes)
    out = out or Path("results") / f"report-{slug(ref)}"
    with comparer(backend, ray_address, workers, threads, max_params, con) as compare_fn, \
            Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     TimeRemainingColumn(), console=con) as p:
        where = device_label(dev) + (", Ray workers" if backend == "ray" else "")
        cka_task = p.add_task(f"CKA on {ds.name} {split} ({where})", total=None)
        step_task = p.add_task("sections", total=None, visible=False)

        def on_step(done: int, total: int, what: str) -> None:
            p.update(step_task, completed=done, total=total, description=what, visible=True)

        rep = build_report(m, ds, plan.batch_size, passes, seed, examples, pc_examples, sections=default_sections(),
                           on_batch=lambda d, n: p.update(cka_task, completed=d, total=n), on_step=on_step, device=dev,
                           compare_fn=compare_fn, batch_plan=plan.to_json(), data_dir=data_dir,
                           probe_examples=probe_examples)
    path = write_report(rep, out)
    plan_warning = plan.warning()
    warn(rep.warnings + ([plan_warning] if plan_warning else []))
    if json_out:
        print_json({"command": "report", "report": str(path), "title": rep.title, "sections": [s.key for s in rep.sections],
                    "provenance": rep.provenance})
    else:
        console.print(f"[bold]{escape(rep.title)}[/]: {escape(', '.join(s.title for s in rep.sections))}", highlight=False)
    wrote([path], json_out)
