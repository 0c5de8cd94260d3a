"""CLI command `grounding`: which similarity measure to trust, scored on the user's own population of seeds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..grounding.defaults import DEFAULT_EXAMPLES, MIN_SEEDS
from ..models.checkpoint import DEFAULT_MAX_PARAMS
from ..provenance import atomic_write_json, atomic_write_text
from .compare import Layers
from .passes import MeasureNames, MeasureParams, measure_params
from .options import (DataDir, Device, FigureFormat, MaxParams, Threads, pick_device, progress_console, set_threads, slug,
                      warn, writable_folder, wrote)
from .output import Json, print_json, table
from .passes import Dataset, Seed
from .stored import Live

Out = Annotated[Optional[Path], typer.Option("--out", callback=writable_folder, help="Folder for grounding.json, "
                                             "grounding.md and the figure (default: results/grounding-<first seed>-<N>seeds-<TAG>, "
                                             "TAG a digest of the request: another request never writes there).")]


def grounding(
    real: Annotated[str, typer.Argument(help=f"The population to ground on: at least {MIN_SEEDS} seeds of one "
                                             "architecture, as a side (population:NAME, A+B+..., @FILE, registry:...).")],
    control: Annotated[Optional[str], typer.Argument(help="A control population of the same architecture trained on "
                                                          "shuffled labels (`hubcompare train --shuffle-labels 1`).")] = None,
    measure: MeasureNames = ["all"],  # noqa: B006 (typer reads the default)
    param: MeasureParams = None,
    layers: Layers = None,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    examples: Annotated[int, typer.Option("--examples", min=8, max=100_000, help="Test examples every measure sees "
                                          "(the first N of the test split).")] = DEFAULT_EXAMPLES,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=8, help="Minibatch size (default: every "
                                                      "example in one batch: exact full-data values).")] = None,
    pc_steps: Annotated[int, typer.Option("--pc-steps", min=1, max=200, help="Principal components removed one by one "
                                          "in the pc-removal test.")] = 10,
    pc_layers: Annotated[int, typer.Option("--pc-layers", min=1, max=100, help="Layers of the first model, evenly "
                                           "spaced, probed in the pc-removal test.")] = 5,
    seed: Seed = 0,
    out: Out = None,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    fmt: FigureFormat = "png",
    json_out: Json = False,
) -> None:
    """Score every similarity measure on sanity tests (specificity, layer order, principal-component removal,
    function, shuffled-label control) on your own seeds: a measure x test table, a figure and JSON."""
    from ..grounding.plots import plot_grounding  # torch loads for the commands that run a model, not at start
    from ..grounding.run import ground
    from ..similarity.measures import parse_measures

    chosen = parse_measures(measure, measure_params(param))
    set_threads(threads)
    dev = pick_device(device)
    con = progress_console(json_out)
    with Live(con) as live:
        result = ground(real, control, dataset=dataset, data_dir=data_dir, measures=chosen, layers=layers,
                        examples=examples, batch_size=batch_size, pc_steps=pc_steps, pc_layers=pc_layers, seed=seed,
                        device=dev, max_params=max_params, on_progress=live)
    warn(result.warnings)
    out = out or _default_out(result)
    out.mkdir(parents=True, exist_ok=True)
    d = result.settings["dataset"]
    caption = (f"{len(result.real)} seeds ({_side(real, result.real)})"
               + (f" vs {len(result.control)} control ({_side(control, result.control)})" if control else "")
               + f", {d['name']} {d['split']}, {result.settings['num_examples']} examples")
    files = [atomic_write_json(out / "grounding.json", result.to_json()),
             atomic_write_text(out / "grounding.md", f"# Grounding: {caption}\n\n" + result.markdown()),
             plot_grounding(result, out / f"grounding.{fmt}", caption)]
    if json_out:
        print_json(result.to_json() | {"files": [str(f) for f in files]})
    else:
        _summary(con, result, caption)
    wrote(files, json_out)


def _side(spec: str, models: list[dict]) -> str:
    """A side as a caption names it: as given when short, else its first and last model."""
    return spec if len(spec) <= 40 else f"{models[0]['ref']} .. {models[-1]['ref']}"


def _default_out(result) -> Path:
    """``results/grounding-FIRST-Nseeds-TAG``: FIRST the first seed, TAG a digest of what the result depends on (so no
    other request writes here)."""
    s = result.settings
    what = {"real": [m["ref"] for m in result.real], "control": [m["ref"] for m in result.control],
            "measures": [m["key"] for m in result.measures], "dataset": s["dataset"], "examples": s["num_examples"],
            "batch": s["batch_size"], "seed": s["seed"], "layers": s["layers"], "pc": [s["pc_layers"], s["pc_steps"]]}
    tag = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]
    first = result.real[0]["ref"].rstrip("/").rsplit("/", 1)[-1]  # a folder's or repository's own name
    return Path("results") / f"grounding-{slug(first)}-{len(result.real)}seeds-{tag}"


def _summary(con, result, caption: str) -> None:
    t = table(title=escape(caption), header_style="bold", collapse_padding=True)
    t.add_column("measure (passed)", no_wrap=True)  # and a score's column as wide as its longest word: 80 columns
    for test in result.tests:
        t.add_column(test, justify="right", min_width=max(len(w) for w in test.split()))
    for row in result.rows():
        cells = []
        for test in result.tests:
            s = row["tests"][test]
            cells.append("n/a" if s["score"] is None else
                         (f"[green]{s['score']:.2f}[/]" if s["passed"] else f"[red]{s['score']:.2f}[/]"))
        t.add_row(f"{escape(row['measure'].split('(')[0])} {row['passed']}/{len(result.tests)}", *cells)
    first = result.rows()[0]["tests"] if result.rows() else {}
    t.add_row("[dim]chance[/]", *[f"[dim]{first[test]['chance']:.2f}[/]" for test in result.tests])
    con.print(t)
    with_params = [m["key"] for m in result.measures if m["params"]]
    if with_params:
        con.print(f"[dim]parameters: {escape(', '.join(with_params))}[/]")
    for test in result.tests:
        con.print(f"[dim]{test}: pass when {escape(result.score(result.measures[0]['key'], test).rule)}[/]")
