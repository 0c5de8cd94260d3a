"""CLI commands of the similarity measures: `measures` (what there is) and `compare` (several measures, one pass)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.markup import escape

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .compare import Labels, Layers, Out
from .options import DataDir, Device, FigureFormat, MaxParams, Threads, pick_device, progress_console, slug, warn, wrote
from .output import Json, plural, print_json, table
from .passes import BatchSize, Dataset, Examples, Passes, Seed, Split
from .stored import Live

MeasureNames = Annotated[list[str], typer.Option(
    "--measure", help="A measure to compute (repeatable; 'all' = every one; `hubcompare measures` lists them). All run "
                      "in the same pass over the data.")]
MeasureParams = Annotated[Optional[list[str]], typer.Option(
    "--param", help="A measure's parameter, MEASURE.NAME=VALUE (repeatable), e.g. rbf-cka.frac=0.5, mknn.k=20.")]


def measures(json_out: Json = False) -> None:
    """Every similarity measure `compare` computes: definition, orientation, range, parameters and citation."""
    from ..similarity.measures import measure_class, measure_names

    rows = []
    for name in measure_names():
        cls = measure_class(name)
        rows.append({"name": name, "definition": cls.definition, "orientation": cls.orientation,
                     "range": list(cls.value_range), "symmetric": cls.symmetric, "estimator": cls.estimator,
                     "params": {p.name: {"default": p.default, "min": p.low, "max": p.high, "help": p.help,
                                         "integer": p.integer} for p in cls.params},
                     "citation": cls.citation})
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


def measure_params(given: list[str] | None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in given or []:
        head, eq, value = item.partition("=")
        measure, dot, name = head.partition(".")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not (eq and dot and measure and name) or number is None:
            raise typer.BadParameter(f"{item!r} is not MEASURE.NAME=NUMBER (e.g. rbf-cka.frac=0.5)", param_hint="'--param'")
        out.setdefault(measure, {})[name] = int(number) if number.is_integer() and "." not in value else number
    return out


def _array(rows: list) -> np.ndarray:
    return np.array([[np.nan if x is None else x for x in row] for row in rows], dtype=float)


def _matrix(a) -> list:
    return [[None if not math.isfinite(float(v)) else float(v) for v in row] for row in a]


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
    json_out: Json = False,
) -> None:
    """Compare models with several similarity measures in one pass (each model runs once per minibatch): per pair of
    models, every measure's layer-by-layer matrix with jackknife SEs, in one JSON file and one figure."""
    from ..comparisons.library import compare as compare_models
    from ..similarity.measures import parse_measures
    from ..similarity.plots import plot_measures
    from .options import set_threads

    if len(refs) < 2:
        raise typer.BadParameter("compare needs at least two models.", param_hint="REFS")
    if label and len(label) != len(refs):
        raise typer.BadParameter("give --label once per model, in the order of the models (or not at all).",
                                 param_hint="'--label'")
    chosen = parse_measures(measure, measure_params(param))
    set_threads(threads)
    dev = pick_device(device)
    con = progress_console(json_out)
    with Live(con) as live:
        result = compare_models(refs, dataset, split=split, data_dir=data_dir, layers=layers, batch_size=batch_size,
                                passes=passes, seed=seed, examples=examples, labels=label, device=dev,
                                max_params=max_params, on_progress=live, measures=chosen)
    warn(result.warnings)
    comp = result.comparison
    out = out or _default_out(refs, chosen, result.settings, label)
    out.mkdir(parents=True, exist_ok=True)
    pairs, files = [], []
    settings = dict(result.settings)
    for i in range(len(refs)):
        for j in range(i + 1, len(refs)):
            doc = {}
            for m in chosen:  # the measures asked for (linear CKA is computed in every pass, and kept if asked)
                key = m.key
                value, se = comp.measure_pair(key, i, j)
                entry = {"key": key, "value": _matrix(value), "se": _matrix(se), "layers_a": comp.captures[i].names,
                         "layers_b": comp.captures[j].names, "orientation": m.orientation, "range": list(m.value_range),
                         "params": dict(m.values), "symmetric": m.symmetric}
                for name, extra in m.derived(comp.measures[key].value).items():
                    a, b = slice(comp.offsets[i], comp.offsets[i + 1]), slice(comp.offsets[j], comp.offsets[j + 1])
                    entry[name] = _matrix(extra.numpy()[a, b])
                doc[m.name] = entry
            stem = f"{slug(result.labels[i])}-vs-{slug(result.labels[j])}"
            pair = {"a": refs[i], "b": refs[j], "label_a": result.labels[i], "label_b": result.labels[j], "measures": doc}
            figure = plot_measures([{"title": e["key"], "value": _array(e["value"]), "range": e["range"],
                                     "orientation": e["orientation"]} for e in doc.values()],
                                   doc[chosen[0].name]["layers_a"], doc[chosen[0].name]["layers_b"], result.labels[i],
                                   result.labels[j], _caption(settings), out / f"{stem}.{fmt}")
            pairs.append(pair | {"figure": str(figure)})
            files.append(figure)
    document = {"command": "compare", "models": [{"ref": r, "label": n} for r, n in zip(refs, result.labels)],
                "measures": pairs[0]["measures"] if len(pairs) == 1 else None, "pairs": pairs, "warnings": result.warnings,
                "settings": settings}
    path = out / "measures.json"
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    files.insert(0, path)
    if json_out:
        print_json(document | {"files": [str(f) for f in files]})
    else:
        _summary(con, pairs, chosen)
    wrote(files, json_out)


def _default_out(refs, chosen, settings: dict, labels) -> Path:
    """``results/compare-A-vs-B-TAG``, TAG a digest of everything the result depends on (models, measures and their
    parameters, data, plan, layers, labels): another request never writes into this one's folder."""
    what = {"refs": list(refs), "measures": [m.key for m in chosen], "labels": labels,
            **{k: settings.get(k) for k in ("dataset", "num_examples", "batch_size", "passes", "seed", "layers")}}
    tag = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path("results") / f"compare-{'-vs-'.join(slug(r) for r in refs)}-{tag}"


def _caption(settings: dict) -> str:
    d = settings.get("dataset", {})
    return (f"{d.get('name', '?')} {d.get('split', '')}, {settings.get('num_examples')} examples, batch "
            f"{settings.get('batch_size')}, {plural(settings.get('num_batches') or 0, 'minibatch', 'minibatches')}")


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
