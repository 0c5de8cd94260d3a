"""CLI commands of the comparison engine: layers, cross-cka, cka, blocks (Typer + rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .options import DataDir, Threads, console, friendly_errors, set_threads, slug, warn, wrote
from ..errors import HubcompareError

Layers = Annotated[
    Optional[list[str]],
    typer.Option("--layers", help="Glob pattern(s) over layer names, e.g. '*.out' (repeatable). Default: every named layer."),
]
Dataset = Annotated[Optional[str], typer.Option("--dataset", help="Dataset to compare on (default: the models' training dataset).")]
Split = Annotated[str, typer.Option("--split", help="train or test.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Minibatch size (the unbiased estimator needs > 3).")]
Passes = Annotated[int, typer.Option("--passes", help="Passes over the data, each freshly shuffled with --seed.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the minibatch shuffles.")]
Examples = Annotated[Optional[int], typer.Option("--examples", help="Use only the first N examples of the split.")]
Out = Annotated[Optional[Path], typer.Option("--out", help="Folder for the PNG/npz/json outputs (default: results/<command>-<models>).")]


def _load(refs: list[str], layers: Optional[list[str]]):
    from ..similarity import CompareModel
    from ..hub import resolve_reference

    models = []
    for ref in refs:
        with console.status(f"loading {ref}"):
            r = resolve_reference(ref)
        meta = r.meta
        prov = {
            "resolved": str(r.pinned),
            "commit_sha": r.commit_sha,
            "path": str(r.path) if r.path else None,
            "architecture": r.config.get("architecture"),
            "model_args": r.config.get("model_args", {}),
        } | {k: meta[k] for k in ("depth", "width", "dataset", "data_fraction", "seed", "test_accuracy", "recipe_hash", "weights_sha256") if k in meta}
        models.append((CompareModel(ref, r.model, prov, layers), meta))
    return models


def _dataset(name: Optional[str], split: str, data_dir: Optional[Path], metas: list[dict]):
    from ..data import load_dataset

    if name is None:
        trained_on = {m.get("dataset") for m in metas if m.get("dataset")}
        if len(trained_on) != 1:
            raise HubcompareError(
                "cannot tell which dataset to compare on"
                + (f" (the models were trained on {sorted(trained_on)})" if trained_on else " (no model records its training data)")
                + ": pass --dataset (and --data-dir for local data)."
            )
        name = trained_on.pop()
    return load_dataset(name, split, data_dir)


def _prepare(refs: list[str], layers, dataset, split, data_dir, threads):
    """What every comparison command does first: threads, load the models, load the dataset."""
    set_threads(threads)
    loaded = _load(refs, layers)
    return [m for m, _ in loaded], _dataset(dataset, split, data_dir, [meta for _, meta in loaded])


def _with_progress(ds, split: str, run):
    """Run ``run(on_batch)`` under a rich progress bar over minibatches."""
    with Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as p:
        task = p.add_task(f"CKA on {ds.name} {split}", total=None)
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
    from ..similarity import relative_depth_match

    match = relative_depth_match(*result.shape)
    for i, m in enumerate(s["best_match"][:top]):
        j = match[i]
        t.add_row(m["layer_a"], m["layer_b"], f"{m['cka']:.4f} ± {m['se']:.4f}", f"{result.value[i, j]:.4f} ± {result.se[i, j]:.4f}")
    return t


@friendly_errors
def layers(
    ref: Annotated[str, typer.Argument(help="A model reference (checkpoint folder, hf-hub:, timm:, registry name).")],
    patterns: Layers = None,
) -> None:
    """List the named layers a comparison can tap, in forward order, with per-example shapes."""
    import torch

    from ..similarity import LayerCapture

    ((m, meta),) = _load([ref], patterns)
    cfg = getattr(m.model, "pretrained_cfg", None) or {}
    shape = cfg.get("input_size") or (getattr(m.model, "in_chans", 3), 32, 32)
    cap = LayerCapture(m.model, patterns, example=torch.zeros(2, *shape))
    shapes: dict[int, tuple] = {}
    cap.run(torch.zeros(2, *shape), lambda i, a: shapes.__setitem__(i, tuple(a.shape[1:])))
    table = Table("#", "layer", "stage", "kind", "shape (per example)", "features", title=f"{ref}: {len(cap.layers)} layers (input {tuple(shape)})")
    for i, l in enumerate(cap.layers):
        sh = shapes.get(i, ())
        feats = 1
        for d in sh:
            feats *= d
        table.add_row(str(i), l.name, "" if l.stage is None else str(l.stage), l.kind, "x".join(map(str, sh)), str(feats))
    console.print(table)


@friendly_errors
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
) -> None:
    """Cross-model CKA heatmaps between every pair of models (each model runs once per minibatch)."""
    from ..similarity import compare
    from ..similarity import plot_cka

    if len(refs) < 2:
        raise HubcompareError("cross-cka needs at least two models (for one model's own heatmap use `hubcompare cka`).")
    models, ds = _prepare(refs, layers, dataset, split, data_dir, threads)
    out = out or Path("results") / ("cross-cka-" + "-vs-".join(slug(r) for r in refs))
    comp = _with_progress(ds, split, lambda on_batch: compare(models, ds, batch_size, passes, seed, examples, on_batch=on_batch))
    warn(comp.warnings)
    written = []
    for i in range(len(refs)):
        for j in range(i + 1, len(refs)):
            r = comp.pair(i, j)
            stem = out / (f"cka-{i}-{j}" if len(refs) > 2 else "cka")
            written += [*r.save(stem), plot_cka(r, stem.with_suffix(".png"))]
            console.print(_summary_table(r))
    wrote(written)


@friendly_errors
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
) -> None:
    """Within-model CKA heatmap of every layer pair (the paper's Figure 1)."""
    from ..similarity import compare
    from ..similarity import plot_cka

    models, ds = _prepare([ref], layers, dataset, split, data_dir, threads)
    out = out or Path("results") / f"cka-{slug(ref)}"
    comp = _with_progress(ds, split, lambda on_batch: compare(models, ds, batch_size, passes, seed, examples, on_batch=on_batch))
    warn(comp.warnings)
    r = comp.pair(0, 0)
    files = [*r.save(out / "cka"), plot_cka(r, out / "cka.png")]
    off = r.value[~np.eye(r.shape[0], dtype=bool)]
    console.print(f"{ref}: {r.shape[0]} layers, mean off-diagonal CKA {float(off.mean()):.4f}, largest SE {r.summary()['max_se']:.4f}")
    wrote(files)


@friendly_errors
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
    pc_examples: Annotated[int, typer.Option("--pc-examples", help="Fixed sample for the exact PC analysis.")] = 1024,
    pc1_threshold: Annotated[float, typer.Option(help="A layer is PC1-dominated at or above this share of variance.")] = 0.5,
    cka_threshold: Annotated[float, typer.Option(help="Minimum mean CKA inside a block.")] = 0.8,
    min_size: Annotated[int, typer.Option(help="Minimum layers in a block.")] = 4,
    max_gap: Annotated[int, typer.Option(help="Non-dominated layers tolerated inside a block (checkerboard).")] = 2,
    min_mean_pc1: Annotated[float, typer.Option(help="Minimum mean PC1 share over a block's layers.")] = 0.63,
    out: Out = None,
    threads: Threads = None,
) -> None:
    """Detect block structure: CKA, PC1 variance share per layer, PC1 cosine, CKA without PC1."""
    from ..similarity import analyze_blocks
    from ..similarity import plot_block_report, plot_cka
    from ..provenance import atomic_write_json

    (m,), ds = _prepare([ref], layers, dataset, split, data_dir, threads)
    out = out or Path("results") / f"blocks-{slug(ref)}"
    rep = _with_progress(ds, split, lambda on_batch: analyze_blocks(
        m, ds, batch_size, passes, seed, examples, pc_examples, pc1_threshold, cka_threshold, min_size, max_gap,
        min_mean_pc1, on_batch=on_batch))
    warn(rep.cka.warnings)
    files = [atomic_write_json(out / "blocks.json", rep.to_json()), plot_block_report(rep, out / "blocks.png"),
             plot_cka(rep.cka, out / "cka.png", rep.blocks)]
    t = Table("block", "layers", "size", "mean CKA inside", "inside, PC1 removed", "mean CKA to outside", "mean PC1 share",
              title=f"{ref}: {len(rep.blocks)} block(s)  (PC1 >= {pc1_threshold}, mean >= {min_mean_pc1}; CKA >= {cka_threshold}; >= {min_size} layers)")
    for k, b in enumerate(rep.blocks):
        t.add_row(str(k + 1), f"{b.start}-{b.stop}: {b.layers[0]} .. {b.layers[-1]}", str(b.size), f"{b.mean_cka:.3f}",
                  f"{b.mean_cka_pc1_removed:.3f}", f"{b.outside_cka:.3f}", f"{b.mean_pc1:.3f}")
    console.print(t)
    fr = rep.pcs.fraction
    constant = [name for name, f in zip(rep.pcs.layers, fr) if np.isnan(f)]
    if len(constant) < len(fr):
        console.print(f"PC1 share of variance per layer ({rep.pcs.num_examples} examples): max {np.nanmax(fr):.3f} at "
                      f"{rep.pcs.layers[int(np.nanargmax(fr))]}, median {float(np.nanmedian(fr)):.3f}")
    if constant:
        console.print(f"[yellow]{len(constant)} layer(s) constant on every example (PC1 share undefined; a collapsed "
                      f"model?): {', '.join(constant[:4])}{' ...' if len(constant) > 4 else ''}[/]")
    wrote(files)
