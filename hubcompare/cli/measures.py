"""CLI commands of the similarity measures: `measures` (what there is) and `compare` (several measures, one pass)."""

from __future__ import annotations

import json
import math
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .compare import Labels, Layers, Out
from .options import DataDir, Device, FigureFormat, MaxParams, Threads, progress_console, slug, warn, wrote
from .output import Json, print_json, table
from .passes import BatchSize, Dataset, Examples, MeasureNames, MeasureParams, Passes, Seed, Split, measure_params
from .stored import Recompute, TrustPulled, default_out, run_stored, stored_json

def measures(json_out: Json = False) -> None:
    """Every similarity measure `compare` computes: definition, orientation, range, parameters and citation."""
    from ..similarity.measures import measure_info, measure_names

    rows = [measure_info(name) for name in measure_names()]
    if json_out:
        print_json({"measures": rows})
        return
    t = table(show_lines=True)
    t.add_column("measure", no_wrap=True, style="bold")
    for header in ("definition", "orientation, range", "parameters", "citation"):
        t.add_column(header)
    for r in rows:
        params = ", ".join(f"{k}={v['default']:g} [{v['min']:g}, {v['max']:g}]" for k, v in r["params"].items()) or "-"
        t.add_row(r["name"], escape(r["definition"]), f"{r['orientation']}, [{r['range'][0]:g}, {r['range'][1]:g}]",
                  escape(params), escape(r["citation"]))
    progress_console(False).print(t)


def _array(rows: list) -> np.ndarray:
    return np.array([[np.nan if x is None else x for x in row] for row in rows], dtype=float)


def compare(
    refs: Annotated[list[str], typer.Argument(help="Two or more model references; every pair is compared in one pass.")],
    measure: MeasureNames = ["cka"],  # noqa: B006 (typer reads the default)
    param: MeasureParams = None,
    layers: Layers = None,
    dataset: Dataset = None,
    split: Split = "test",
    data_dir: DataDir = None,
    batch_size: BatchSize = None,
    passes: Passes = 1,
    seed: Seed = 0,
    examples: Examples = None,
    out: Out = None,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    label: Labels = None,
    fmt: FigureFormat = "png",
    recompute: Recompute = False,
    trust_pulled: TrustPulled = False,
    json_out: Json = False,
) -> None:
    """Compare models with several similarity measures in one pass (each model runs once per minibatch): per pair of
    models, every measure's layer-by-layer matrix with jackknife SEs, in one JSON file and one figure. Stored like
    every result (the measures and their parameters in its key)."""
    from ..comparisons.requests import ComparisonRequest
    from ..comparisons.run import export, files_of
    from ..similarity.measures import parse_measures

    if len(refs) < 2:
        raise typer.BadParameter("compare needs at least two models.", param_hint="REFS")
    if label and len(label) != len(refs):
        raise typer.BadParameter("give --label once per model, in the order of the models (or not at all).",
                                 param_hint="'--label'")
    chosen = parse_measures(measure, measure_params(param))
    con = progress_console(json_out)
    req = ComparisonRequest("compare", tuple(refs), dataset, split, tuple(layers) if layers else None, batch_size, passes,
                            seed, examples, options={"measures": [m.key for m in chosen]},
                            labels=tuple(label) if label else None, fmt=fmt)
    outcome = run_stored(req, con, recompute=recompute, trust_pulled=trust_pulled, data_dir=data_dir, threads=threads,
                         max_params=max_params, device=device)
    warn(outcome.warnings)
    out = out or default_out("compare-" + "-vs-".join(slug(r) for r in refs), outcome, req)
    files = export(outcome, req, out)
    document = json.loads(files_of(req, files, "document")[0].read_text())
    pairs = document["pairs"]
    for pair, figure in zip(pairs, files_of(req, files, "figure")):
        pair["figure"] = str(figure)
    if json_out:
        print_json(document | {"measures": pairs[0]["measures"] if len(pairs) == 1 else None,
                               "files": [str(f) for f in files]} | stored_json(outcome))
    else:
        _summary(con, pairs, chosen)
    wrote(files, json_out)


def _summary(con, pairs: list[dict], chosen) -> None:
    """Per pair, per measure: the mean over matching depths (the diagonal when both have as many layers) and overall."""
    for p in pairs:
        t = table(title=f"{escape(p['label_a'])} vs {escape(p['label_b'])}", header_style="bold")
        for header in ("measure", "orientation", "mean", "mean same-depth", "largest SE"):
            t.add_column(header, justify="left" if header in ("measure", "orientation") else "right", no_wrap=True)
        for m in chosen:
            e = p["measures"][m.name]
            v, se = _array(e["value"]), _array(e["se"])
            diag = np.diag(v) if v.shape[0] == v.shape[1] else np.array([np.nan])
            t.add_row(escape(e["key"]), e["orientation"], _num(np.nanmean(v) if np.isfinite(v).any() else np.nan),
                      _num(np.nanmean(diag) if np.isfinite(diag).any() else np.nan),
                      _num(np.nanmax(se) if np.isfinite(se).any() else np.nan))
        con.print(t)


def _num(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.4f}"
