"""CLI commands of the comparison engine: layers, cross-cka, cka, blocks (Typer + rich)."""

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
    FigureFormat,
    MaxParams,
    Threads,
    device_label,
    finite,
    pick_device,
    progress_console,
    set_threads,
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
    comparer,
    plan_for,
)
from .passes import Layers as BlockLayers

Layers = Annotated[
    Optional[list[str]],
    typer.Option("--layers", help="Glob pattern(s) over layer names, e.g. '*.out' (repeatable). Default: every named layer "
                                  "(`hubcompare layers REF` lists them)."),
]
Out = Annotated[Optional[Path], typer.Option("--out", callback=writable_folder, help="Folder for the figure/npz/json outputs (default: results/<command>-<models>).")]
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


def _prepare(refs: list[str], layers, dataset, split, data_dir, threads, max_params: int, device: str, con):
    """What every comparison command does first: threads, the device, load the models, load the dataset to compare on."""
    from ..similarity.engine import comparison_dataset

    set_threads(threads)
    dev = pick_device(device)
    models = _load(refs, layers, max_params, con)
    return models, comparison_dataset(models, dataset, split, data_dir), dev


def _finish(result, plan, label_a: str, label_b: str) -> None:
    """Name a result's models and record the batch plan (how the batch size was chosen, the SE it allows)."""
    result.label_a, result.label_b = label_a, label_b
    result.provenance["batch_plan"] = plan.to_json()


def _with_progress(ds, split: str, dev, run, con, backend: str = "local"):
    """Run ``run(on_batch)`` under a rich progress bar over minibatches (on stderr under --json)."""
    with Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=con) as p:
        where = device_label(dev) + (", Ray workers" if backend == "ray" else "")
        task = p.add_task(f"CKA on {ds.name} {split} ({where})", total=None)
        return run(lambda d, n: p.update(task, completed=d, total=n))


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


def _plan_warnings(plan) -> list[str]:
    w = plan.warning()
    return [w] if w else []


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
    cap = LayerCapture(m.model, patterns, example=spec.example(device=dev))
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
    json_out: Json = False,
) -> None:
    """Cross-model CKA heatmaps between every pair of models (each model runs once per minibatch); with three or more
    models also one grid figure of every pair."""
    from .seeds import cross_cka_sides, names_sides  # population sides (population:NAME, A+B, @FILE, ...): across-seeds

    if names_sides(refs):
        return cross_cka_sides(**locals())  # the options across-seeds shares with this command are passed on
    from ..similarity.labels import file_slugs, unique_labels
    from ..similarity.plots import plot_cka, plot_cka_grid

    if len(refs) < 2:
        raise typer.BadParameter("cross-cka needs at least two models (for one model's own heatmap use `hubcompare cka`).",
                                 param_hint="REFS")
    if label and len(label) != len(refs):
        raise typer.BadParameter(f"{plural(len(label), 'label')} for {plural(len(refs), 'model')}: give --label once per "
                                 "model, in the order of the models (or not at all).", param_hint="'--label'")
    check_backend(backend, ray_address, workers)
    con = progress_console(json_out)
    models, ds, dev = _prepare(refs, layers, dataset, split, data_dir, threads, max_params, device, con)
    names = unique_labels([m.provenance for m in models], refs, label)
    plan = plan_for(ds, examples, batch_size, passes)
    out = out or Path("results") / ("cross-cka-" + "-vs-".join(slug(r) for r in refs))
    with comparer(backend, ray_address, workers, threads, max_params, con) as compare:
        comp = _with_progress(ds, split, dev, lambda on_batch: compare(models, ds, plan.batch_size, passes, seed, examples,
                                                                       on_batch=on_batch, device=dev), con, backend)
    warn(comp.warnings + _plan_warnings(plan))
    written, results, pair_files = [], {}, {}
    slugs = file_slugs(names)
    for i in range(len(refs)):
        for j in range(i + 1, len(refs)):
            r = results[i, j] = comp.pair(i, j)
            _finish(r, plan, names[i], names[j])
            stem = out / (f"cka-{slugs[i]}-vs-{slugs[j]}" if len(refs) > 2 else "cka")
            pair_files[i, j] = [*r.save(stem), plot_cka(r, stem.with_suffix(f".{fmt}"))]
            written += pair_files[i, j]
    if len(refs) > 2:
        written.append(plot_cka_grid(results, names, out / f"cka-grid.{fmt}"))
    if json_out:
        print_json({"command": "cross-cka", "models": [{"ref": r, "label": n} for r, n in zip(refs, names)],
                    "batch_plan": plan.to_json(),
                    "pairs": [results[k].to_json() | {"files": [str(f) for f in pair_files[k]]} for k in results],
                    "files": [str(f) for f in written]})
    else:
        _plan_line(con, plan)
        for k, r in results.items():
            _summary(con, r, plan)
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
    json_out: Json = False,
) -> None:
    """Within-model CKA heatmap of every layer pair (the paper's Figure 1)."""
    from ..similarity.labels import unique_labels
    from ..similarity.plots import plot_cka

    check_backend(backend, ray_address, workers)
    con = progress_console(json_out)
    models, ds, dev = _prepare([ref], layers, dataset, split, data_dir, threads, max_params, device, con)
    (name,) = unique_labels([models[0].provenance], [ref], [label])
    plan = plan_for(ds, examples, batch_size, passes)
    out = out or Path("results") / f"cka-{slug(ref)}"
    with comparer(backend, ray_address, workers, threads, max_params, con) as compare:
        comp = _with_progress(ds, split, dev, lambda on_batch: compare(models, ds, plan.batch_size, passes, seed, examples,
                                                                       on_batch=on_batch, device=dev), con, backend)
    warn(comp.warnings + _plan_warnings(plan))
    r = comp.pair(0, 0)
    _finish(r, plan, name, name)
    files = [*r.save(out / "cka"), plot_cka(r, out / f"cka.{fmt}")]
    if json_out:
        print_json(r.to_json() | {"files": [str(f) for f in files]})
    else:
        _plan_line(con, plan)
        se = "n/a" if plan.standard_error == "none" else _num(r.max_se)
        _say(con, f"[bold]{escape(name)}[/] ({escape(ref)}): {plural(r.shape[0], 'layer')}, mean off-diagonal CKA "
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
    json_out: Json = False,
) -> None:
    """Detect block structure: CKA, PC1 variance share per layer, PC1 cosine, CKA without PC1.

    The block criteria default to the calibrated ones of hubcompare.similarity.BlockCriteria
    (printed with the result). With --backend ray the CKA is sharded; the PC analysis runs here.
    """
    from ..provenance import atomic_write_json
    from ..similarity.blocks import BlockCriteria, analyze_blocks
    from ..similarity.labels import unique_labels
    from ..similarity.plots import plot_block_report, plot_cka

    criteria = BlockCriteria().override(pc1_threshold=pc1_threshold, cka_threshold=cka_threshold, min_size=min_size,
                                        max_gap=max_gap, min_mean_pc1=min_mean_pc1)
    check_backend(backend, ray_address, workers)
    con = progress_console(json_out)
    (m,), ds, dev = _prepare([ref], layers, dataset, split, data_dir, threads, max_params, device, con)
    (name,) = unique_labels([m.provenance], [ref], [label])
    plan = plan_for(ds, examples, batch_size, passes)
    out = out or Path("results") / f"blocks-{slug(ref)}"
    with comparer(backend, ray_address, workers, threads, max_params, con) as compare:
        rep = _with_progress(ds, split, dev, lambda on_batch: analyze_blocks(
            m, ds, plan.batch_size, passes, seed, examples, pc_examples, criteria, on_batch=on_batch, device=dev,
            compare_fn=compare), con, backend)
    warn(rep.cka.warnings + _plan_warnings(plan))
    for r in (rep.cka, rep.cka_pc1_removed):
        _finish(r, plan, name, name)
    report = rep.to_json() | {"label": name}
    files = [atomic_write_json(out / "blocks.json", report), plot_block_report(rep, out / f"blocks.{fmt}"),
             plot_cka(rep.cka, out / f"cka.{fmt}", rep.blocks)]
    if json_out:
        print_json(report | {"files": [str(f) for f in files]})
        wrote(files, json_out)
        return
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
