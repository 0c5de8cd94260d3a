"""CLI command training a population from a grid file: ``grid`` (Typer + rich live view, final table)."""

from __future__ import annotations

import json
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from .hub import Register
from .options import DataDir, Device, console, finite, one_of, pick_device, progress_console, writable_folder, wrote
from .output import Json, add_column, plural, print_json, table

STATUS_STYLE = {"done": "green", "skipped": "cyan", "failed": "red", "pending": "yellow", "running": "blue"}


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _View:
    """The live view: counts, elapsed and ETA on one line, then one line per running run."""

    def __init__(self) -> None:
        self.status = None
        self.running: dict[str, tuple[int, int, int]] = {}  # run -> (attempt, epoch, epochs)
        self.started = time.perf_counter()

    def update(self, e) -> None:
        self.status = e.status
        if e.kind in ("start", "epoch", "evaluate"):
            self.running[e.run] = (e.attempt, e.epoch, e.epochs)
        elif e.kind in ("done", "retry", "failed", "skip", "refit"):
            self.running.pop(e.run, None)

    def __rich__(self):
        s = self.status
        if s is None:
            return Text("planning")
        line = Text.assemble(
            ("done ", "bold"), (f"{s.done + s.skipped}/{s.total}", "green"), f" ({s.skipped} skipped)  ",
            ("running ", "bold"), (str(s.running), "blue"), "  ", ("pending ", "bold"), (str(s.pending), "yellow"), "  ",
            ("failed ", "bold"), (str(s.failed), "red" if s.failed else ""), "  ",
            f"elapsed {_duration(time.perf_counter() - self.started)}  ",
            ("ETA ", "bold"), _duration(max(0.0, s.eta_s - (time.perf_counter() - self.started - s.elapsed_s)) if s.eta_s is not None else None),
        )
        rows = [Text(f"  {name}  epoch {epoch}/{epochs}" + (f"  (attempt {attempt})" if attempt > 1 else ""), style="dim")
                for name, (attempt, epoch, epochs) in sorted(self.running.items())]
        return Group(line, *rows)


def grid(
    grid_file: Annotated[str, typer.Argument(metavar="GRID", help="Grid YAML path, or a bundled grid name: digits-zoo.")],
    out: Annotated[Optional[Path], typer.Option("--out", callback=writable_folder, help="Population folder (default: the grid's out:, else runs/<population>).")] = None,
    backend: Annotated[str, typer.Option("--backend", callback=one_of("local", "ray"), help="local: worker processes on this machine; ray: Ray tasks (pip install 'hubcompare[ray]').")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address (e.g. auto, ray://HOST:10001); default: start a local Ray.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Local worker processes (default: one per CPU, at most one per run).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch threads per run (default: the CPUs split between the workers; Ray: --cpus-per-run).")] = None,
    cpus_per_run: Annotated[Optional[float], typer.Option("--cpus-per-run", min=0, callback=finite, help="Ray: CPUs each run requests (default 1, or --threads).")] = None,
    gpus_per_run: Annotated[float, typer.Option("--gpus-per-run", min=0, callback=finite, help="Ray: GPUs each run requests.")] = 0.0,
    max_retries: Annotated[int, typer.Option("--max-retries", min=0, help="Retries of a failing run (a killed worker counts as one); each resumes from its last epoch.")] = 1,
    data_dir: DataDir = None,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over runs whose folder holds another recipe's checkpoint or resume state (finished runs of the same recipe are still skipped).")] = False,
    push: Annotated[bool, typer.Option("--push", help="Push every finished run to the Hub as a population (tags + collection, as push-population).")] = False,
    owner: Annotated[Optional[str], typer.Option("--owner", help="With --push: user or organisation that owns the repos.")] = None,
    population: Annotated[Optional[str], typer.Option("--population", help="With --push: population name (default: the grid's population:).")] = None,
    private: Annotated[bool, typer.Option("--private", help="With --push: create the repos private.")] = False,
    register: Register = True,
    as_json: Json = False,
) -> None:
    """Train one run per point of a grid (a recipe plus axes) into one population folder.

    Idempotent: finished runs (same recipe hash) are skipped, interrupted ones resume, failing ones are retried, then reported.

    One log per run in POPULATION/logs/, and POPULATION/grid.json with every run's status.
    """
    from ..errors import GridRunsFailedError
    from ..training.grid import run_grid
    from ..training.gridspec import load_grid

    if ray_address is not None and backend != "ray":
        raise typer.BadParameter("--ray-address needs --backend ray.", param_hint="'--ray-address'")
    if push and not owner:
        raise typer.BadParameter("--push needs --owner (the user or organisation that owns the repos).", param_hint="'--owner'")
    if backend == "local":  # a Ray run resolves its device where it lands (a GPU node, with its GPUs)
        pick_device(device)
    spec = load_grid(grid_file, out)
    hub_population = population or spec.population
    if push:
        from ..hub.endpoint import hub_endpoint
        from ..hub.names import check_name, check_namespace

        check_name(hub_population, "population name")
        check_namespace(owner)
        hub_endpoint()  # HF_ENDPOINT must be an http(s) URL: refused before any run trains, not after
    out_console = progress_console(as_json)
    todo_note = f"{plural(len(spec.points), 'run')} of {escape(spec.recipe)} ({', '.join(f'{k} x{len(v)}' for k, v in spec.axes.items()) or 'no axes'})"
    out_console.print(f"[bold]Grid[/] {escape(spec.population)}: {todo_note} -> {escape(str(spec.out))}  [dim]backend {backend}[/]",
                  highlight=False)
    if spec.until_fit is not None:
        out_console.print(f"[bold]Fit rule[/]: {escape(spec.until_fit.describe())}", highlight=False)
    view = _View()
    with Live(view, console=out_console, refresh_per_second=4, transient=True) as live:
        def on_event(e) -> None:
            view.update(e)
            if e.kind == "retry":
                live.console.print(f"[yellow]retry[/] {e.run} (attempt {e.attempt} failed: {escape(e.error or '')})", highlight=False)
            elif e.kind == "failed":
                live.console.print(f"[red]failed[/] {e.run}: {escape(e.error or '')}", highlight=False)
            elif e.kind == "refit":
                acc = "unknown" if e.accuracy is None else f"{e.accuracy:.4f}"
                live.console.print(f"[yellow]refit[/] {e.run}: train accuracy {acc} is below the fit rule's (kept in underfit/); "
                                   f"training again for {e.epochs} epochs", highlight=False)
            elif e.kind == "done":
                acc = "" if e.accuracy is None else f": test accuracy {e.accuracy:.4f}"
                live.console.print(f"[green]done[/] {e.run}{acc}", highlight=False)
            live.refresh()

        try:
            with _sigterm_interrupts():
                result = run_grid(spec, backend=backend, workers=workers, threads=threads, ray_address=ray_address,
                                  cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, max_retries=max_retries,
                                  data_dir=data_dir, overwrite=overwrite, device=device, on_event=on_event)
        except KeyboardInterrupt:  # the app's error boundary prints "Interrupted." and exits 130
            out_console.print(f"Finished epochs are saved in each run's .resume folder: rerun the same command to resume "
                          f"({spec.out}).")
            raise
    _table(result, out_console)
    if push and result.finished:
        from .hub import push_members

        push_members([r.run_dir for r in result.finished], hub_population, owner, private=private, register=register,
                     out=out_console)
    if as_json:
        print_json(json.loads(Path(result.manifest).read_text()))
    if result.failed:
        raise GridRunsFailedError(
            f"{len(result.failed)} of {len(result.runs)} runs failed (listed above; logs in {result.out / 'logs'}): fix the cause "
            "and rerun the same command (finished runs are skipped, the others resume)"
            + (", then push again" if push else ""), {r.name: (r.errors or [""])[-1] for r in result.failed})


def _where(ran_on: list[dict]) -> str:
    """Where each attempt of this session ran: the host, or the Ray node's name (else IP) and id."""
    def one(n: dict) -> str:
        return f"{n.get('node_name') or n.get('node_ip')} {n['node_id'][:8]}" if n.get("node_id") else str(n.get("host", "?"))
    return " > ".join(dict.fromkeys(one(n) for n in ran_on)) or "-"


@contextmanager
def _sigterm_interrupts():
    """SIGTERM (``kill``, a service manager, the end of a session) stops a grid as Ctrl-C does: the workers are
    stopped, grid.json is written and every run keeps its last finished epoch (SIGTERM's default would kill this
    process without writing anything)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _table(result, out) -> None:
    t = table(title=f"{result.population}: {len(result.finished)}/{len(result.runs)} finished in {_duration(result.wall_time_s)} "
                    f"({result.backend}) -> {result.out}")
    for name in ("run", "status", "test acc", "epochs", "train acc", "tries", "resumed at", "where", "train time"):
        add_column(t, name)
    for r in result.runs:
        rungs = r.rungs if r.status in ("done", "skipped") and r.rungs else [*r.rungs, {"epochs": r.epochs, "train_accuracy": r.train_accuracy}]
        t.add_row(r.name, f"[{STATUS_STYLE.get(r.status, '')}]{r.status}[/]", "-" if r.test_accuracy is None else f"{r.test_accuracy:.4f}",
                  " > ".join(str(g["epochs"]) for g in rungs),
                  " > ".join("-" if g["train_accuracy"] is None else f"{g['train_accuracy']:.4f}" for g in rungs),
                  str(r.attempts), ", ".join(map(str, r.resumed_at)) or "-", _where(r.ran_on),
                  "-" if r.wall_time_s is None else f"{r.wall_time_s:.1f} s" if r.wall_time_s < 60 else _duration(r.wall_time_s))
    out.print(t)
    for r in result.failed:
        out.print(f"[red]{r.name}[/]: {escape((r.errors or ['?'])[-1])}", highlight=False, soft_wrap=True)
    out.print(f"logs: {result.out / 'logs'}/RUN.log", highlight=False, soft_wrap=True)
    wrote([result.manifest], json=out is not console)
