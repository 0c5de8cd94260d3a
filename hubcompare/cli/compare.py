"""CLI commands of the comparison engine: layers, cross-cka, cka, blocks (Typer + rich)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .options import (
    DataDir,
    Device,
    FigureFormat,
    MaxParams,
    Threads,
    finite,
    pick_device,
    progress_console,
    slug,
    warn,
    writable_folder,
    wrote,
)
from .output import Json, plural, print_json, table
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
)
from .passes import Layers as BlockLayers
from .stored import Recompute, TrustPulled, default_out, run_stored, stored_json

Layers = Annotated[
    Optional[list[str]],
    typer.Option("--layers", help="Glob pattern(s) over layer names, e.g. '*.out' (repeatable). Default: every named layer "
                                  "(`hubcompare layers REF` lists them)."),
]
Out = Annotated[Optional[Path], typer.Option("--out", callback=writable_folder, help="Folder for the figure/npz/json outputs (default: results/<command>-<models>-<KEY8>, KEY8 the result key's first 8 hex digits: another request never overwrites it; a folder you name has its files replaced).")]
Label = Annotated[Optional[str], typer.Option(
    "--label", help="What figures, tables and the JSON call the model (default: its card's name, e.g. 'ResNet-20 (1x)', "
                    "else its short reference).")]
Labels = Annotated[Optional[list[str]], typer.Option(
    "--label", help="What figures, tables, file names and the JSON call each model: repeat once per model, in order "
                    "(default: each card's name, e.g. 'ResNet-20 (1x)', with the seed or reference added where two agree).")]
def _criterion(help: str, share: bool = False, **limits):
    """An option overriding one block criterion; unset, the library's calibrated default applies. ``share``: a
    number in [0, 1] (a share of variance, a CKA value)."""
    if share:
        limits = {"min": 0.0, "max": 1.0, "callback": finite}
    return typer.Option(help=f"{help} [default: BlockCriteria's, shown with the result]", show_default=False, **limits)


def _num(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _pm(v: float, se: float, plan) -> str:
    """``0.9123 ± 0.0041``; ``± n/a`` where the plan leaves too few minibatches for a standard error (or it is undefined)."""
    if v != v:
        return "undefined"
    return f"{v:.4f} ± " + (f"{se:.4f}" if plan.standard_error != "none" and se == se else "n/a")


def _load(refs: list[str], layers: Optional[list[str]], max_params: int, con):
    """Resolve each reference to a model to compare, with its provenance."""
    from ..hub.references import resolve_reference
    from ..similarity.engine import CompareModel

    models = []
    for ref in refs:
        with con.status(f"loading {escape(ref)}"):
            resolved = resolve_reference(ref, max_params=max_params)
        warn(resolved.notices)  # e.g. offline: the newest cached commit stands in for an unpinned reference
        models.append(CompareModel.from_resolved(resolved, layers, ref=ref))
    return models


def _say(con, text: str) -> None:
    """A result line, whole: the terminal wraps it, rich never cuts or breaks a name in it."""
    con.print(text, soft_wrap=True, highlight=False)


def _summary(con, result, plan, top: int = 40) -> None:
    """A pair's mean same-depth CKA and, per layer of A, its best match in B (models named above the table, so the
    columns stay narrow and no layer name is folded at 80 columns)."""
    from ..similarity.results import relative_depth_match

    s = result.summary()
    _say(con, f"[bold]A[/] = {escape(result.name_a)} ({escape(result.ref_a)})")
    _say(con, f"[bold]B[/] = {escape(result.name_b)} ({escape(result.ref_b)})")
    _say(con, f"A vs B: mean diagonal CKA [bold]{s['mean_diagonal_cka']:.4f}[/] ({s['diagonal']})")
    t = table(box=None, header_style="bold", pad_edge=False)
    for header, justify in (("layer of A", "left"), ("best match in B", "left"), ("CKA ± SE", "right"), ("same-depth CKA", "right")):
        t.add_column(header, justify=justify, no_wrap=True, overflow="fold")
    match = relative_depth_match(*result.shape)
    for i, m in enumerate(s["best_match"][:top]):
        j = match[i]
        t.add_row(escape(m["layer_a"]), escape(m["layer_b"]), _pm(m["cka"], m["se"], plan), _pm(result.value[i, j], result.se[i, j], plan))
    con.print(t)
    if len(s["best_match"]) > top:
        _say(con, f"({plural(len(s['best_match']) - top, 'more layer')} of A in the JSON)")


def _plan_line(con, plan) -> None:
    _say(con, f"[dim]{escape(plan.describe())}; standard errors: leave-one-minibatch-out jackknife"
              f"{'' if plan.standard_error != 'none' else ' (n/a: too few minibatches)'}[/]")


def layers(
    ref: Annotated[str, typer.Argument(help="A model reference (checkpoint folder, hf-hub:, timm:, registry name).")],
    patterns: Layers = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    json_out: Json = False,
) -> None:
    """List the named layers a comparison can tap, in forward order, with per-example shapes."""
    from ..models.inputs import InputSpec
    from ..similarity.capture import LayerCapture

    con = progress_console(json_out)
    dev = pick_device(device)
    (m,) = _load([ref], patterns, max_params, con)
    spec = InputSpec.from_model(m.model)
    m.model.to(dev)
    cap = LayerCapture(m.model, patterns, example=spec.example(device=dev), name=m.ref)
    shapes: dict[int, tuple] = {}
    cap.run(spec.example(device=dev), lambda i, a: shapes.__setitem__(i, tuple(a.shape[1:])))
    rows = []
    for i, l in enumerate(cap.layers):
        sh = shapes.get(i, ())
        feats = 1
        for d in sh:
            feats *= d
        rows.append({"index": i, "name": l.name, "stage": l.stage, "kind": l.kind, "shape": list(sh), "features": feats})
    if json_out:
        print_json({"ref": ref, "input_shape": list(spec.shape), "layers": rows})
        return
    _say(con, f"[bold]{escape(ref)}[/]: {plural(len(rows), 'layer')} (input {spec.shape})")
    t = table("#", "layer", "stage", "kind", "shape (per example)", "features")
    t.columns[1].no_wrap = True
    for r in rows:
        t.add_row(str(r["index"]), r["name"], "" if r["stage"] is None else str(r["stage"]), r["kind"],
                  "x".join(map(str, r["shape"])), str(r["features"]))
    con.print(t)


def cross_cka(
    refs: Annotated[list[str], typer.Argument(help="Two or more model references; every pair is compared in one pass.")],
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
    backend: Backend = "local",
    ray_address: RayAddress = None,
    workers: Workers = None,
    label: Labels = None,
    fmt: FigureFormat = "png",
    recompute: Recompute = False,
    trust_pulled: TrustPulled = False,
    json_out: Json = False,
) -> None:
    """Cross-model CKA heatmaps between every pair of models (each model runs once per minibatch); with three or more
    models also one grid figure of every pair."""
    from .seeds import cross_cka_sides, names_sides  # population sides (population:NAME, A+B, @FILE, ...): across-seeds

    if names_sides(refs):
        return cross_cka_sides(**locals())  # the options across-seeds shares with this command are passed on
    from ..comparisons.cka_kinds import batch_plan_from_json, cka_result_from_json, labels_for
    from ..comparisons.requests import ComparisonRequest
    from ..comparisons.run import export, files_of

    if len(refs) < 2:
        raise typer.BadParameter("cross-cka needs at least two models (for one model's own heatmap use `hubcompare cka`).",
                                 param_hint="REFS")
    if label and len(label) != len(refs):
        raise typer.BadParameter(f"{plural(len(label), 'label')} for {plural(len(refs), 'model')}: give --label once per "
                                 "model, in the order of the models (or not at all).", param_hint="'--label'")
    check_backend(backend, ray_address, workers)
    con = progress_console(json_out)
    req = ComparisonRequest("cross-cka", tuple(refs), dataset, split, tuple(layers) if layers else None, batch_size, passes,
                            seed, examples, labels=tuple(label) if label else None, fmt=fmt)
    outcome = run_stored(req, con, recompute=recompute, trust_pulled=trust_pulled, data_dir=data_dir, threads=threads, max_params=max_params,
                         device=device, backend=backend, ray_address=ray_address, workers=workers)
    warn(outcome.warnings)
    out = out or default_out("cross-cka-" + "-vs-".join(slug(r) for r in refs), outcome, req)
    written = export(outcome, req, out)
    stored = outcome.stored
    names, plan = labels_for(stored, req), batch_plan_from_json(stored.summary["batch_plan"])
    documents = files_of(req, written, "document")  # one per pair; a pair's files share its stem
    pair_files = [[f for f in written if f.stem == d.stem] for d in documents]
    pairs = [json.loads(d.read_text()) for d in documents]
    if json_out:
        print_json({"command": "cross-cka", "models": [{"ref": r, "label": n} for r, n in zip(refs, names)],
                    "batch_plan": plan.to_json(),
                    "pairs": [p | {"files": [str(f) for f in files]} for p, files in zip(pairs, pair_files)],
                    "files": [str(f) for f in written]} | stored_json(outcome))
    else:
        _plan_line(con, plan)
        for p in pairs:
            _summary(con, cka_result_from_json(p), plan)
    wrote(written, json_out)


def cka(
    ref: Annotated[str, typer.Argument(help="A model reference.")],
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
    backend: Backend = "local",
    ray_address: RayAddress = None,
    workers: Workers = None,
    label: Label = None,
    fmt: FigureFormat = "png",
    recompute: Recompute = False,
    trust_pulled: TrustPulled = False,
    json_out: Json = False,
) -> None:
    """Within-model CKA heatmap of every layer pair (the paper's Figure 1)."""
    from ..comparisons.cka_kinds import batch_plan_from_json, cka_result_from_json
    from ..comparisons.requests import ComparisonRequest
    from ..comparisons.run import export, files_of

    check_backend(backend, ray_address, workers)
    con = progress_console(json_out)
    req = ComparisonRequest("cka", (ref,), dataset, split, tuple(layers) if layers else None, batch_size, passes, seed,
                            examples, labels=(label,) if label else None, fmt=fmt)
    outcome = run_stored(req, con, recompute=recompute, trust_pulled=trust_pulled, data_dir=data_dir, threads=threads, max_params=max_params,
                         device=device, backend=backend, ray_address=ray_address, workers=workers)
    warn(outcome.warnings)
    out = out or default_out(f"cka-{slug(ref)}", outcome, req)
    files = export(outcome, req, out)
    plan = batch_plan_from_json(outcome.stored.summary["batch_plan"])
    printed = json.loads(files_of(req, files, "document")[0].read_text())
    if json_out:
        print_json(printed | {"files": [str(f) for f in files]} | stored_json(outcome))
    else:
        r = cka_result_from_json(printed)
        _plan_line(con, plan)
        se = "n/a" if plan.standard_error == "none" else _num(r.max_se)
        _say(con, f"[bold]{escape(r.name_a)}[/] ({escape(ref)}): {plural(r.shape[0], 'layer')}, mean off-diagonal CKA "
                  f"{_num(r.mean_off_diagonal_cka)}, largest SE {se}")
    wrote(files, json_out)


def blocks(
    ref: Annotated[str, typer.Argument(help="A model reference.")],
    layers: BlockLayers = None,
    dataset: Dataset = None,
    split: Split = "test",
    data_dir: DataDir = None,
    batch_size: BatchSize = None,
    passes: Passes = 1,
    seed: Seed = 0,
    examples: Examples = None,
    pc_examples: Annotated[int, typer.Option("--pc-examples", min=2, help="Fixed sample for the exact PC analysis (2 or more examples).")] = 1024,
    pc1_threshold: Annotated[Optional[float], _criterion("A layer is PC1-dominated at or above this share of variance.", share=True)] = None,
    cka_threshold: Annotated[Optional[float], _criterion("Minimum mean CKA inside a block.", share=True)] = None,
    min_size: Annotated[Optional[int], _criterion("Minimum layers in a block.", min=1)] = None,
    max_gap: Annotated[Optional[int], _criterion("Non-dominated layers tolerated inside a block (checkerboard).", min=0)] = None,
    min_mean_pc1: Annotated[Optional[float], _criterion("Minimum mean PC1 share over a block's layers.", share=True)] = None,
    out: Out = None,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    backend: Backend = "local",
    ray_address: RayAddress = None,
    workers: Workers = None,
    label: Label = None,
    fmt: FigureFormat = "png",
    recompute: Recompute = False,
    trust_pulled: TrustPulled = False,
    json_out: Json = False,
) -> None:
    """Detect block structure: CKA, PC1 variance share per layer, PC1 cosine, CKA without PC1.

    The block criteria default to the calibrated ones of hubcompare.similarity.BlockCriteria
    (printed with the result). With --backend ray the CKA is sharded; the PC analysis runs here.
    """
    from ..comparisons.cka_kinds import batch_plan_from_json, block_report_from_json
    from ..comparisons.requests import ComparisonRequest
    from ..comparisons.run import export, files_of

    check_backend(backend, ray_address, workers)
    con = progress_console(json_out)
    options = {"pc_examples": pc_examples, "pc1_threshold": pc1_threshold, "cka_threshold": cka_threshold,
               "min_size": min_size, "max_gap": max_gap, "min_mean_pc1": min_mean_pc1}
    req = ComparisonRequest("blocks", (ref,), dataset, split, tuple(layers) if layers else None, batch_size, passes, seed,
                            examples, {k: v for k, v in options.items() if v is not None},
                            labels=(label,) if label else None, fmt=fmt)
    outcome = run_stored(req, con, recompute=recompute, trust_pulled=trust_pulled, data_dir=data_dir, threads=threads, max_params=max_params,
                         device=device, backend=backend, ray_address=ray_address, workers=workers)
    warn(outcome.warnings)
    out = out or default_out(f"blocks-{slug(ref)}", outcome, req)
    files = export(outcome, req, out)
    report = json.loads(files_of(req, files, "document")[0].read_text())
    if json_out:
        print_json(report | {"files": [str(f) for f in files]} | stored_json(outcome))
        wrote(files, json_out)
        return
    rep, name = block_report_from_json(report), report["label"]
    plan = batch_plan_from_json(outcome.stored.summary["batch_plan"])
    _plan_line(con, plan)
    n = len(rep.pcs.layers)
    if rep.blocks:
        _say(con, f"[bold]{escape(name)}[/] ({escape(ref)}): {plural(len(rep.blocks), 'block')} among {plural(n, 'layer')} "
                  f"({escape(rep.criteria.describe())})")
        t = table(box=None, header_style="bold", pad_edge=False, collapse_padding=True)
        for header in ("#", "first layer", "last layer"):
            t.add_column(header, no_wrap=True)  # layer names whole at 80 columns
        for header in ("size", "CKA\ninside", "inside\nw/o PC1", "CKA to\noutside", "mean\nPC1"):
            t.add_column(header, justify="right", no_wrap=True)
        for k, b in enumerate(rep.blocks):
            t.add_row(str(k + 1), escape(b.layers[0]), escape(b.layers[-1]), str(b.size), f"{b.mean_cka:.3f}",
                      _num(b.mean_cka_pc1_removed, ".3f"), f"{b.outside_cka:.3f}", f"{b.mean_pc1:.3f}")
        con.print(t)
    else:
        c = rep.criteria
        _say(con, f"No block found in [bold]{escape(name)}[/] ({escape(ref)}): checked its {plural(n, 'layer')} for a run "
                  f"of at least {plural(c.min_size, 'layer')} each with PC1 share >= {c.pc1_threshold} (gaps of up to "
                  f"{plural(c.max_gap, 'layer')} bridged), mean PC1 share >= {c.min_mean_pc1} and mean CKA inside >= "
                  f"{c.cka_threshold}; none qualifies. (--pc1-threshold, --cka-threshold, --min-size, --max-gap and "
                  "--min-mean-pc1 change these.)")
    pc1 = rep.pcs.fraction_summary()
    if pc1 is not None:
        _say(con, f"PC1 share of variance per layer ({rep.pcs.num_examples} examples): max {pc1['max']:.3f} at "
                  f"{escape(pc1['max_layer'])}, median {pc1['median']:.3f}")
    constant = rep.pcs.constant_layers
    if constant:
        _say(con, f"[yellow]{plural(len(constant), 'layer')} constant on every example (PC1 share undefined; a collapsed "
                  f"model?): {escape(', '.join(constant[:4]))}{' ...' if len(constant) > 4 else ''}[/]")
    wrote(files, json_out)
