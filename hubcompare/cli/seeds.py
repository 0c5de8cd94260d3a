"""CLI command `across-seeds` (and `cross-cka` given population sides): what seeds and architectures share, per layer."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from ..hub.sidespec import is_local_folder, names_many_models
from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .options import (
    DataDir,
    Device,
    FigureFormat,
    MaxParams,
    Threads,
    console,
    finite,
    progress_console,
    slug,
    warn,
    wrote,
)
from .output import Json, add_column, plural, print_json, table
from .passes import (
    Backend,
    BatchSize,
    Dataset,
    Examples,
    Layers,
    MeasureParams,
    Passes,
    RayAddress,
    Seed,
    Split,
    Workers,
    check_backend,
    measure_params,
)
from .population import LabelOpt, Out, SideArg
from .stored import Recompute, TrustPulled, default_out, run_stored, stored_json

MaxMemory = Annotated[float, typer.Option(
    "--max-memory", min=0.01, callback=finite,
    help="GiB one pass may hold (every model's Grams per minibatch + the jackknife's per-minibatch matrices; each Ray "
         "worker holds the same); a larger request is refused before any work, naming what to cut.")]
ExtraMeasures = Annotated[Optional[list[str]], typer.Option(
    "--measure", help="Another similarity measure in the same pass (repeatable; 'all'; `hubcompare measures` lists them): "
                      "the same pair sets and inside/outside classes as CKA's (the blocks stay CKA's).")]
PcExamples = Annotated[int, typer.Option("--pc-examples", min=2, help="Fixed sample for each model's exact PC1 shares (its block).")]


def names_sides(refs: list[str]) -> bool:
    """Whether any argument is a many-model side (population:, registry:, hf-tag:, collection:, @FILE, A+B)."""
    return any(names_many_models(r, is_local_folder) for r in refs)


def cross_cka_sides(refs: list[str], label: list[str] | None = None, **options: Any) -> None:
    """`cross-cka SIDE_A SIDE_B` with population sides: the across-seeds summary (the options it shares are passed on)."""
    if len(refs) != 2:
        raise typer.BadParameter(f"population sides are compared two at a time, got {len(refs)}: `hubcompare across-seeds "
                                 "SIDE_A SIDE_B` (or cross-cka with two sides).", param_hint="REFS")
    if label and len(label) != 2:
        raise typer.BadParameter("give --label once per side (twice) or not at all.", param_hint="'--label'")
    known = {k: v for k, v in options.items() if k in ACROSS_OPTIONS}
    across_seeds(refs[0], refs[1], label_a=label[0] if label else None, label_b=label[1] if label else None, **known)


def _stat(mean, sd, n, count: bool = True) -> str:
    """``0.912 ± 0.031`` (sd over pairs; ``-`` with one pair), and the number of values on a second line."""
    if not n:
        return "-" + ("\nn=0" if count else "")
    return f"{mean:.3f} ± {'-' if sd is None or sd != sd else f'{sd:.3f}'}" + (f"\nn={n}" if count else "")


def across_seeds(
    a: SideArg,
    b: SideArg,
    layers: Layers = None,
    dataset: Dataset = None,
    split: Split = "test",
    data_dir: DataDir = None,
    batch_size: BatchSize = None,
    passes: Passes = 1,
    seed: Seed = 0,
    examples: Examples = None,
    pc_examples: PcExamples = 1024,
    measure: ExtraMeasures = None,
    param: MeasureParams = None,
    label_a: LabelOpt = None,
    label_b: LabelOpt = None,
    max_memory: MaxMemory = 8.0,
    out: Out = None,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    backend: Backend = "local",
    ray_address: RayAddress = None,
    workers: Workers = None,
    fmt: FigureFormat = "png",
    recompute: Recompute = False,
    trust_pulled: TrustPulled = False,
    json_out: Json = False,
) -> None:
    """Across seeds: CKA between every pair of seeds at matching layers, within each side and across the two, inside
    vs outside each model's block; one pass (every model's Grams once per minibatch).

    Layers match by name within a side (one architecture a side) and by relative depth across sides. Default layers of a
    hubcompare ResNet: the stem and every block output. --measure adds other similarity measures to the same pass, each
    summarised the same way. Writes across_seeds.png (or --format), .json and .csv."""
    from ..comparisons.cka_kinds import batch_plan_from_json
    from ..comparisons.requests import ComparisonRequest
    from ..comparisons.run import export, files_of
    from ..comparisons.seed_kinds import labels_for, seeds_result_from_json
    from ..similarity.measures import parse_measures

    check_backend(backend, ray_address, workers)
    extra = [m.key for m in parse_measures(measure, measure_params(param)) if m.key != "cka"] if measure else []
    con = progress_console(json_out)
    labels = (label_a or None, label_b or None)
    req = ComparisonRequest("across-seeds", (a, b), dataset, split, tuple(layers) if layers else None, batch_size, passes,
                            seed, examples, {"pc_examples": pc_examples, "max_memory_gb": max_memory}
                            | ({"measures": extra} if extra else {}),
                            labels=labels if any(labels) else None, fmt=fmt)
    outcome = run_stored(req, con, recompute=recompute, trust_pulled=trust_pulled, data_dir=data_dir, threads=threads, max_params=max_params,
                         device=device, backend=backend, ray_address=ray_address, workers=workers)
    label_a, label_b = labels_for(outcome.stored, req)
    out = out or default_out(f"across-seeds-{slug(label_a)}-vs-{slug(label_b)}", outcome, req)
    files = export(outcome, req, out)
    doc = json.loads(files_of(req, files, "document")[0].read_text())
    plan_warning = batch_plan_from_json(outcome.stored.summary["batch_plan"]).warning()
    warn(doc["warnings"] + ([plan_warning] if plan_warning else []))
    if json_out:
        print_json({"command": "across-seeds", **doc, "files": [str(f) for f in files]} | stored_json(outcome))
    else:
        _tables(seeds_result_from_json(doc))
    wrote(files, json_out)


def _tables(r) -> None:
    from rich.markup import escape

    from ..populations.wording import seeds_sentence

    s = r.summary()
    for key, side in (("a", r.a), ("b", r.b)):
        t = table("#", "layer", title=f"{side.label}: {plural(len(side.models), 'model')}, "
                  f"{s['models_with_a_block'][key]} with a block; {plural(s['pairs'][f'within_{key}'], 'seed pair')} within, "
                  f"{plural(s['pairs'][f'across_on_{key}'], 'pair')} across")
        for col in ("within: mean ± sd", "across, same rel. depth", "in a block"):
            add_column(t, col, justify="right")
        for row in (x for x in r.layer_rows() if x["side"] == key):
            t.add_row(str(row["index"]), row["layer"], _stat(row["within_mean"], row["within_sd"], row["within_n"], False),
                      _stat(row["across_mean"], row["across_sd"], row["across_n"], False), f"{100 * row['block_share']:.0f}%")
        console.print(t)
    names = {"within_a": f"within {r.a.label}", "within_b": f"within {r.b.label}",
             "across_on_a": f"across, on {r.a.label}'s layers", "across_on_b": f"across, on {r.b.label}'s layers"}
    for what, summary in (("CKA", s), *((key, m["summary"]) for key, m in r.measures.items())):
        t = table("pairs", "outside both blocks", "one layer in its block", "both in their blocks",
                  title=f"{escape(what)} over (pair, layer) values, by where the two layers lie")
        for key, name in names.items():
            t.add_row(name, *(_stat(**{f: summary[key][c][f] for f in ("mean", "sd", "n")}) for c in ("outside", "partly", "inside")))
        console.print(t)
    console.print(escape(seeds_sentence(s, r.a.label, r.b.label)), soft_wrap=True, highlight=False)


ACROSS_OPTIONS = set(across_seeds.__code__.co_varnames[: across_seeds.__code__.co_argcount]) - {"a", "b", "label_a", "label_b",
                                                                                               "measure", "param"}
