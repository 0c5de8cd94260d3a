"""CLI command `grounding`: which similarity measure to trust, scored on the user's own population of seeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..grounding.defaults import DEFAULT_EXAMPLES, MIN_SEEDS
from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .compare import Layers
from .options import DataDir, Device, FigureFormat, MaxParams, Threads, progress_console, slug, warn, writable_folder, wrote
from .output import Json, print_json, table
from .passes import Dataset, MeasureNames, MeasureParams, Seed, measure_params
from .stored import Recompute, TrustPulled, default_out, run_stored, stored_json

Out = Annotated[Optional[Path], typer.Option("--out", callback=writable_folder, help="Folder for grounding.json, "
                                             "grounding.md and the figure (default: results/grounding-<first seed>-<N>seeds-<KEY8>, "
                                             "KEY8 the start of the result's key: another request never writes there).")]


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
    recompute: Recompute = False,
    trust_pulled: TrustPulled = False,
    json_out: Json = False,
) -> None:
    """Score every similarity measure on sanity tests (specificity, layer order, principal-component removal,
    function, shuffled-label control) on your own seeds: a measure x test table, a figure and JSON. Stored like every
    result (asked again, it comes from the store)."""
    from ..comparisons.grounding_kind import caption  # torch loads for the commands that run a model, not at start
    from ..comparisons.requests import ComparisonRequest
    from ..comparisons.run import export, files_of
    from ..grounding.run import Grounding
    from ..similarity.measures import parse_measures

    chosen = parse_measures(measure, measure_params(param))
    req = ComparisonRequest("grounding", (real,) if control is None else (real, control), dataset, "test",
                            tuple(layers) if layers else None, batch_size, 1, seed, examples,
                            {"measures": [m.key for m in chosen], "pc_steps": pc_steps, "pc_layers": pc_layers}, fmt=fmt)
    con = progress_console(json_out)
    outcome = run_stored(req, con, recompute=recompute, trust_pulled=trust_pulled, data_dir=data_dir, threads=threads,
                         max_params=max_params, device=device)
    warn(outcome.warnings)
    if out is None:
        first = real.split("+")[0].rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]  # a folder's or a side's own name
        out = default_out(f"grounding-{slug(first)}-{outcome.stored.summary['models']['real']}seeds", outcome, req)
    files = export(outcome, req, out)
    doc = json.loads(files_of(req, files, "document")[0].read_text())
    result = Grounding.from_json(doc)
    if json_out:
        print_json(doc | {"files": [str(f) for f in files]} | stored_json(outcome))
    else:
        _summary(con, result, caption(result))
    wrote(files, json_out)


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
