"""CLI commands of one checkpoint folder: train, eval, info (Typer + rich)."""

from __future__ import annotations

import json
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
    RunDir,
    Threads,
    console,
    device_label,
    finite,
    fraction,
    pick_device,
    set_threads,
    warn,
    writable_folder,
)


def train(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML path, or a bundled recipe name: digits, digits-blocks, cifar10.")],
    out: Annotated[Optional[Path], typer.Option("--out", callback=writable_folder, help="Checkpoint folder to write (default: runs/<recipe>-d<depth>-w<width>-s<seed>).")] = None,
    depth: Annotated[Optional[int], typer.Option(help="ResNet depth, 6n+2 (14, 20, 26, ..., 56, 62, 110).")] = None,
    width: Annotated[Optional[float], typer.Option(callback=finite, help="Width multiplier k (stage channels 16k, 32k, 64k).")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, max=SEED_MAX, help="Seed for initialisation, data order, augmentation and the subset draw.")] = None,
    data_fraction: Annotated[Optional[str], typer.Option("--data-fraction", callback=fraction, help="Share of the training split: 1, 1/4, 1/16, ...")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Number of epochs.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset: digits, cifar10, cifar10-jpeg, cifar100, imagefolder.")] = None,
    data_dir: DataDir = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Retrain even if --out holds a checkpoint or a resumable run.")] = False,
    threads: Threads = None,
    device: Device = "auto",
) -> None:
    """Train a recipe into a checkpoint folder (resumes an interrupted run in the same --out)."""
    from ..training.loop import TrainEvent
    from ..training.loop import train as run_training
    from ..training.recipes import load_recipe

    set_threads(threads)
    dev = pick_device(device)
    if width is not None and float(width).is_integer():
        width = int(width)
    r = load_recipe(recipe, {
        "model.depth": depth, "model.width": width, "train.seed": seed, "data.fraction": data_fraction,
        "train.epochs": epochs, "data.dataset": dataset,
    })
    m = r["model"]
    out = out or Path("runs") / f"{r.name}-d{m['depth']}-w{m['width']:g}-s{r['train']['seed']}"
    console.print(
        f"[bold]Training[/] ResNet-{m['depth']} ({m['width']:g}x) on {r['data']['dataset']} "
        f"(fraction {r['data']['fraction']}, seed {r['train']['seed']}, {r['train']['epochs']} epochs) "
        f"-> {out} on {device_label(dev)}  [dim]recipe {r.name} {r.hash}[/]"
    )
    progress = Progress(
        TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}  lr {task.fields[lr]:.4g}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )
    task = None

    def on_event(e: TrainEvent) -> None:
        nonlocal task
        if e.kind == "start":
            if e.resumed_from:
                console.print(f"[yellow]Resuming[/] after epoch {e.resumed_from} of {e.epochs} from {out / '.resume'}")
            console.print(f"{e.num_train} training examples, {e.steps} steps per epoch")
            task = progress.add_task("train", total=e.steps * e.epochs, completed=e.steps * e.resumed_from, loss=0.0, acc=0.0, lr=0.0)
        elif e.kind == "step":
            progress.update(task, advance=1, description=f"epoch {e.epoch}/{e.epochs}", loss=e.loss, acc=e.accuracy, lr=e.lr)
        elif e.kind == "epoch":
            progress.console.print(f"epoch {e.epoch:>4}/{e.epochs}  loss {e.loss:.4f}  train acc {e.accuracy:.4f}  lr {e.lr:.5f}")
        elif e.kind == "evaluate":
            progress.update(task, description="evaluating on the test split")

    try:
        with progress:
            result = run_training(r, out, data_dir=data_dir, on_event=on_event, overwrite=overwrite, device=dev)
    except KeyboardInterrupt:  # the app's error boundary prints "Interrupted." and exits 130
        console.print(f"Completed epochs are saved in {out / '.resume'}: rerun the same command to resume.")
        raise
    console.print(
        f"[bold green]Done:[/] test accuracy [bold]{result.test_accuracy:.4f}[/] (train {result.train_accuracy:.4f}), "
        f"{result.wall_time_s:.1f} s of training. Checkpoint: {result.run_dir}"
    )


def eval_(
    run_dir: RunDir,
    data_dir: DataDir = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 500,
    write: Annotated[bool, typer.Option("--write", help="Store the recomputed predictions (and their hash) in the folder.")] = False,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
) -> None:
    """Recompute test accuracy and per-example predictions of a checkpoint folder."""
    from ..models.checkpoint import load_checkpoint
    from ..training.evaluate import evaluate_checkpoint

    set_threads(threads)
    dev = pick_device(device)
    ckpt = load_checkpoint(run_dir)
    with Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as p:
        task = p.add_task("eval", total=None)
        report = evaluate_checkpoint(ckpt, data_dir, batch_size, write, on_batch=lambda done, n: p.update(task, completed=done, total=n),
                                     max_params=max_params, device=dev)
    preds = report.predictions
    table = Table(title=f"{run_dir} on {preds.dataset['name']} {preds.dataset['split']}", show_header=False)
    table.add_row("examples", str(len(preds.ids)))
    table.add_row("accuracy (recomputed)", f"{preds.accuracy:.4f}")
    if report.stored_accuracy is not None:
        table.add_row("accuracy (stored)", f"{report.stored_accuracy:.4f}")
    if report.stored_predictions_agree is not None:
        table.add_row("argmax agreement with stored predictions", f"{report.stored_predictions_agree:.4f}")
        table.add_row("max |logit difference|", f"{report.max_abs_logit_diff:.2e}")
    table.add_row("dataset fingerprint", preds.dataset["fingerprint"])
    table.add_row("device", device_label(dev))
    table.add_row("predictions written", "yes" if report.written else "no (use --write)")
    console.print(table)
    problem = report.stored_predictions_error
    if problem and report.written:  # drop the advice to rerun with --write: that is what just happened
        head, _, advice = problem.rpartition("; ")
        warn([f"replaced the stored predictions, which were not usable: {head if 'eval --write' in advice else problem}"])
    elif problem:
        warn([f"the stored predictions were not compared: {problem}"])


def info(
    run_dir: RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print config.json's hubcompare block as JSON.")] = False,
) -> None:
    """Show a checkpoint folder's model-card metadata and training provenance."""
    from ..models.card import read_card
    from ..models.checkpoint import CARD_FILE, load_checkpoint

    ckpt = load_checkpoint(run_dir)
    meta = ckpt.meta
    if as_json:
        console.print_json(json.dumps(meta.to_dict()))
        return
    table = Table(title=str(run_dir), show_header=False)
    card_path = ckpt.path / CARD_FILE
    if card_path.is_file():
        card = read_card(card_path)
        table.add_row("model", str(card.data.model_name))
        table.add_row("tags", ", ".join(map(str, card.data.tags or [])))
        for r in card.data.eval_results or []:
            value = r.metric_value
            table.add_row(f"{r.metric_type} ({r.dataset_name} {r.dataset_split})",
                          f"{value:.4f}" if isinstance(value, (int, float)) else str(value))
    table.add_row("architecture", f"{ckpt.architecture} {json.dumps(ckpt.config.get('model_args', {}))}")
    for key in ("dataset", "data_fraction", "seed", "epochs", "recipe_hash", "train_accuracy", "wall_time_s", "created_at"):
        if getattr(meta, key) is not None:
            table.add_row(key, str(getattr(meta, key)))
    if meta.device:
        table.add_row("device", " ".join(str(meta.device[k]) for k in ("type", "name", "capability") if meta.device.get(k)))
    for split, d in (("train_data", meta.train_data), ("test_data", meta.test_data)):
        if d:
            table.add_row(split, f"{d['num_examples']} examples, fingerprint {d['fingerprint']}, {d['source']}")
    if meta.package_versions:
        table.add_row("versions", ", ".join(f"{k} {v}" for k, v in meta.package_versions.items()))
    table.add_row("files", ", ".join(sorted(p.name for p in ckpt.path.iterdir() if p.is_file())))
    console.print(table)
