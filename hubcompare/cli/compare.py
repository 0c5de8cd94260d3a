"""CLI commands of the comparison engine: layers, cross-cka, cka, blocks (Typer + rich)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .options import (
    SEED_MAX,
    DataDir,
    Device,
    MaxParams,
    Threads,
    console,
    device_label,
    finite,
    one_of,
    pick_device,
    set_threads,
    slug,
    warn,
    writable_folder,
    wrote,
)

Layers = Annotated[
    Optional[list[str]],
    typer.Option("--layers", help="Glob pattern(s) over layer names, e.g. '*.out' (repeatable). Default: every named layer."),
]
Dataset = Annotated[Optional[str], typer.Option("--dataset", help="Dataset to compare on (default: the models' training dataset).")]
Split = Annotated[str, typer.Option("--split", help="train or test.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Minibatch size (the unbiased estimator needs > 3).")]
Passes = Annotated[int, typer.Option("--passes", help="Passes over the data, each freshly shuffled with --seed.")]
Seed = Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="Seed of the minibatch shuffles.")]
Examples = Annotated[Optional[int], typer.Option("--examples", help="Use only the first N examples of the split.")]
Out = Annotated[Optional[Path], typer.Option("--out", callback=writable_folder, help="Folder for the PNG/npz/json outputs (default: results/<command>-<models>).")]
Backend = Annotated[str, typer.Option(
    "--backend", callback=one_of("local", "ray"),
    help="local: this process; ray: the minibatches sharded over Ray workers, each loading the models once, summed "
         "here: the same numbers (pip install 'hubcompare\\[ray]').")]
RayAddress = Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address (e.g. auto, ray://HOST:10001); default: start a local Ray. Model folders must be on a filesystem every node sees.")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=1, help="Ray: shards of the minibatches, one worker each (default: the cluster's CPUs, at most one per minibatch); each uses --threads threads (default: the CPUs split between them).")]


def _criterion(help: str, share: bool = False, **limits):
    """An option overriding one block criterion; unset, the library's calibrated default applies. ``share``: a
    number in [0, 1] (a share of variance, a CKA value)."""
    if share:
        limits = {"min": 0.0, "max": 1.0, "callback": finite}
    return typer.Option(help=f"{help} [default: BlockCriteria's, shown with the result]", show_default=False, **limits)


def _num(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _load(refs: list[str], layers: Optional[list[str]], max_params: int):
    """Resolve each reference to a model to compare, with its provenance."""
    from ..hub.references import resolve_reference
    from ..similarity.engine import CompareModel

    models = []
    for ref in refs:
        with console.status(f"loading {ref}"):
            models.append(CompareModel.from_resolved(resolve_reference(ref, max_params=max_params), layers, ref=ref))
    return models


def _prepare(refs: list[str], layers, dataset, split, data_dir, threads, max_params: int, device: str):
    """What every comparison command does first: threads, the device, load the models, load the dataset to compare on."""
    from ..similarity.engine import comparison_dataset

    set_threads(threads)
    dev = pick_device(device)
    models = _load(refs, layers, max_params)
    return models, comparison_dataset(models, dataset, split, data_dir), dev


def _check_backend(backend: str, ray_address: Optional[str], workers: Optional[int]) -> None:
    """Refuse Ray options without the ray backend, and a Ray address nothing answers at, before any model is loaded."""
    if backend != "ray":
        for flag, value in (("--ray-address", ray_address), ("--workers", workers)):
            if value is not None:
                raise typer.BadParameter(f"{flag} needs --backend ray.", param_hint=f"'{flag}'")
        return
    from ..errors import CompareBackendError
    from ..training.backends import check_ray_address

    check_ray_address(ray_address, CompareBackendError)


@contextmanager
def _comparer(backend: str, ray_address: Optional[str], workers: Optional[int], threads: Optional[int], max_params: int):
    """What computes the CKA: ``compare`` in this process, or the same sharded over Ray (started or reached here)."""
    if backend != "ray":
        from ..similarity.engine import compare

        yield compare
        return
    from ..similarity.distributed import RayShards

    with console.status(f"connecting to Ray at {ray_address}" if ray_address else "starting Ray"):
        shards = RayShards(ray_address, workers, threads, max_params)
    with shards:
        yield shards.compare


def _with_progress(ds, split: str, dev, run, backend: str = "local"):
    """Run ``run(on_batch)`` under a rich progress bar over minibatches."""
    with Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as p:
        where = device_label(dev) + (", Ray workers" if backend == "ray" else "")
        task = p.add_task(f"CKA on {ds.name} {split} ({where})", total=None)
        return run(lambda d, n: p.update(task, completed=d, total=n))


def _summary_table(result, top: int = 40) -> Table:
    s = result.summary()
    console.print(f"[bold]{result.ref_a}[/] (A) vs [bold]{result.ref_b}[/] (B): mean diagonal CKA "
                  f"[bold]{s['mean_diagonal_cka']:.4f}[/] ({s['diagonal']})", soft_wrap=True)
    t = Table()
    t.add_column("layer of A")
    t.add_column("best match in B")
    t.add_column("CKA ± SE", justify="right")
    t.add_column("same-depth CKA", justify="right")
    from ..similarity.results import relative_depth_match

    match = relative_depth_match(*result.shape)
    for i, m in enumerate(s["best_match"][:top]):
        j = match[i]
        t.add_row(m["layer_a"], m["layer_b"], f"{m['cka']:.4f} ± {m['se']:.4f}", f"{result.value[i, j]:.4f} ± {result.se[i, j]:.4f}")
    return t


def layers(
    ref: Annotated[str, typer.Argument(help="A model reference (checkpoint folder, hf-hub:, timm:, registry name).")],
    patterns: Layers = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
) -> None:
    """List the named layers a comparison can tap, in forward order, with per-example shapes."""
    from ..models.inputs import InputSpec
    from ..similarity.capture import LayerCapture

    dev = pick_device(device)
    (m,) = _load([ref], patterns, max_params)
    spec = InputSpec.from_model(m.model)
    m.model.to(dev)
    cap = LayerCapture(m.model, patterns, example=spec.example(device=dev))
    shapes: dict[int, tuple] = {}
    cap.run(spec.example(device=dev), lambda i, a: shapes.__setitem__(i, tuple(a.shape[1:])))
    table = Table("#", "layer", "stage", "kind", "shape (per example)", "features", title=f"{ref}: {len(cap.layers)} layers (input {spec.shape})")
    for i, l in enumerate(cap.layers):
        sh = shapes.get(i, ())
        feats = 1
        for d in sh:
            feats *= d
        table.add_row(str(i), l.name, "" if l.stage is None else str(l.stage), l.kind, "x".join(map(str, sh)), str(feats))
    console.print(table)


def cross_cka(
    refs: Annotated[list[str], typer.Argument(help="Two or more model references; every pair is compared in one pass.")],
    layers: Layers = None,
    dataset: Dataset = None,
    split: Split = "test",
    data_dir: DataDir = None,
    batch_size: BatchSize = 256,
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
) -> None:
    """Cross-model CKA heatmaps between every pair of models (each model runs once per minibatch)."""
    from ..similarity.plots import plot_cka

    if len(refs) < 2:
        raise typer.BadParameter("cross-cka needs at least two models (for one model's own heatmap use `hubcompare cka`).",
                                 param_hint="REFS")
    _check_backend(backend, ray_address, workers)
    models, ds, dev = _prepare(refs, layers, dataset, split, data_dir, threads, max_params, device)
    out = out or Path("results") / ("cross-cka-" + "-vs-".join(slug(r) for r in refs))
    with _comparer(backend, ray_address, workers, threads, max_params) as compare:
        comp = _with_progress(ds, split, dev, lambda on_batch: compare(models, ds, batch_size, passes, seed, examples,
                                                                       on_batch=on_batch, device=dev), backend)
    warn(comp.warnings)
    written = []
    for i in range(len(refs)):
        for j in range(i + 1, len(refs)):
            r = comp.pair(i, j)
            stem = out / (f"cka-{i}-{j}" if len(refs) > 2 else "cka")
            written += [*r.save(stem), plot_cka(r, stem.with_suffix(".png"))]
            console.print(_summary_table(r))
    wrote(written)


def cka(
    ref: Annotated[str, typer.Argument(help="A model reference.")],
    layers: Layers = None,
    dataset: Dataset = None,
    split: Split = "test",
    data_dir: DataDir = None,
    batch_size: BatchSize = 256,
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
) -> None:
    """Within-model CKA heatmap of every layer pair (the paper's Figure 1)."""
    from ..similarity.plots import plot_cka

    _check_backend(backend, ray_address, workers)
    models, ds, dev = _prepare([ref], layers, dataset, split, data_dir, threads, max_params, device)
    out = out or Path("results") / f"cka-{slug(ref)}"
    with _comparer(backend, ray_address, workers, threads, max_params) as compare:
        comp = _with_progress(ds, split, dev, lambda on_batch: compare(models, ds, batch_size, passes, seed, examples,
                                                                       on_batch=on_batch, device=dev), backend)
    warn(comp.warnings)
    r = comp.pair(0, 0)
    files = [*r.save(out / "cka"), plot_cka(r, out / "cka.png")]
    console.print(f"{ref}: {r.shape[0]} layers, mean off-diagonal CKA {_num(r.mean_off_diagonal_cka)}, "
                  f"largest SE {_num(r.max_se)}")
    wrote(files)


def blocks(
    ref: Annotated[str, typer.Argument(help="A model reference.")],
    layers: Layers = None,
    dataset: Dataset = None,
    split: Split = "test",
    data_dir: DataDir = None,
    batch_size: BatchSize = 256,
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
) -> None:
    """Detect block structure: CKA, PC1 variance share per layer, PC1 cosine, CKA without PC1.

    The block criteria default to the calibrated ones of hubcompare.similarity.BlockCriteria
    (printed with the result). With --backend ray the CKA is sharded; the PC analysis runs here.
    """
    from ..provenance import atomic_write_json
    from ..similarity.blocks import BlockCriteria, analyze_blocks
    from ..similarity.plots import plot_block_report, plot_cka

    criteria = BlockCriteria().override(pc1_threshold=pc1_threshold, cka_threshold=cka_threshold, min_size=min_size,
                                        max_gap=max_gap, min_mean_pc1=min_mean_pc1)
    _check_backend(backend, ray_address, workers)
    (m,), ds, dev = _prepare([ref], layers, dataset, split, data_dir, threads, max_params, device)
    out = out or Path("results") / f"blocks-{slug(ref)}"
    with _comparer(backend, ray_address, workers, threads, max_params) as compare:
        rep = _with_progress(ds, split, dev, lambda on_batch: analyze_blocks(
            m, ds, batch_size, passes, seed, examples, pc_examples, criteria, on_batch=on_batch, device=dev,
            compare_fn=compare), backend)
    warn(rep.cka.warnings)
    files = [atomic_write_json(out / "blocks.json", rep.to_json()), plot_block_report(rep, out / "blocks.png"),
             plot_cka(rep.cka, out / "cka.png", rep.blocks)]
    t = Table("block", "layers", "size", "mean CKA inside", "inside, PC1 removed", "mean CKA to outside", "mean PC1 share",
              title=f"{ref}: {len(rep.blocks)} block(s)  ({rep.criteria.describe()})")
    for k, b in enumerate(rep.blocks):
        t.add_row(str(k + 1), f"{b.start}-{b.stop}: {b.layers[0]} .. {b.layers[-1]}", str(b.size), f"{b.mean_cka:.3f}",
                  f"{b.mean_cka_pc1_removed:.3f}", f"{b.outside_cka:.3f}", f"{b.mean_pc1:.3f}")
    console.print(t)
    pc1 = rep.pcs.fraction_summary()
    if pc1 is not None:
        console.print(f"PC1 share of variance per layer ({rep.pcs.num_examples} examples): max {pc1['max']:.3f} at "
                      f"{pc1['max_layer']}, median {pc1['median']:.3f}")
    constant = rep.pcs.constant_layers
    if constant:
        console.print(f"[yellow]{len(constant)} layer(s) constant on every example (PC1 share undefined; a collapsed "
                      f"model?): {', '.join(constant[:4])}{' ...' if len(constant) > 4 else ''}[/]")
    wrote(files)
