"""CLI commands of one model: train, eval, info (Typer + rich)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .options import (
    seed_range,
    DataDir,
    Device,
    MaxParams,
    Threads,
    console,
    device_label,
    err_console,
    finite,
    fraction,
    pick_device,
    progress_console,
    set_threads,
    warn,
    writable_folder,
)
from .output import Json, plural, print_json, table

ModelRef = Annotated[str, typer.Argument(
    help="A checkpoint folder, local-dir:PATH, hf-hub:OWNER/NAME[@REV] or a registry name (`hubcompare registry list`).")]


def train(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML path, or a bundled recipe name: digits, digits-blocks, cifar10.")],
    out: Annotated[Optional[Path], typer.Option("--out", callback=writable_folder, help="Checkpoint folder to write (default: runs/<recipe>-d<depth>-w<width>-s<seed>).")] = None,
    depth: Annotated[Optional[int], typer.Option(help="ResNet depth, 6n+2 (14, 20, 26, ..., 56, 62, 110).")] = None,
    width: Annotated[Optional[float], typer.Option(callback=finite, help="Width multiplier k (stage channels 16k, 32k, 64k).")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, callback=seed_range, help="Seed for initialisation, data order, augmentation and the subset draw.")] = None,
    data_fraction: Annotated[Optional[str], typer.Option("--data-fraction", callback=fraction, help="Share of the training split: 1, 1/4, 1/16, ...")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Number of epochs (a recipe warm-up as long is shortened, with a note).")] = None,
    shuffle_labels: Annotated[Optional[float], typer.Option("--shuffle-labels", min=0.0, max=1.0, help="Share of the training labels to permute (seeded by --seed), e.g. 1 for a random-label control population.")] = None,
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

    dev = pick_device(device)
    if width is not None and float(width).is_integer():
        width = int(width)
    r = load_recipe(recipe, {
        "model.depth": depth, "model.width": width, "train.seed": seed, "data.fraction": data_fraction,
        "train.epochs": epochs, "data.dataset": dataset, "data.shuffle_labels": shuffle_labels,
    })
    warn(list(r.notes))
    m = r["model"]
    shuffled = r["data"]["shuffle_labels"]
    out = out or Path("runs") / (f"{r.name}-d{m['depth']}-w{m['width']:g}-s{r['train']['seed']}"
                                 + (f"-shuffled{shuffled:g}" if shuffled else ""))
    console.print(
        f"[bold]Training[/] ResNet-{m['depth']} ({m['width']:g}x) on {r['data']['dataset']} "
        f"(fraction {r['data']['fraction']}, seed {r['train']['seed']}, {plural(r['train']['epochs'], 'epoch')}"
        + (f", {shuffled:.0%} of the labels shuffled" if shuffled else "") + ") "
        f"-> {out} on {device_label(dev)}  [dim]recipe {r.name} {r.hash}[/]"
    )
    # Every column but the bar has a fixed width, and the bar takes what is left, so the line fits 80 columns
    # (what a pipe gets) without ellipses: the loss and accuracy here, the lr on each epoch's line.
    progress = Progress(
        TextColumn("[bold blue]{task.description}"), BarColumn(bar_width=None), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )
    task = evaluation = None

    def on_event(e: TrainEvent) -> None:
        nonlocal task, evaluation
        if e.kind == "start":
            if e.resumed_from:
                console.print(f"[yellow]Resuming[/] after epoch {e.resumed_from} of {e.epochs} from {out / '.resume'}")
            console.print(f"{plural(e.num_train, 'training example')}, {plural(e.steps, 'step')} per epoch")
            if e.threads is not None:
                err_console.print(e.threads.describe(), highlight=False)
            task = progress.add_task(f"epoch {e.resumed_from}/{e.epochs}", total=e.steps * e.epochs,
                                     completed=e.steps * e.resumed_from, info="")
        elif e.kind == "step":
            progress.update(task, advance=1, description=f"epoch {e.epoch}/{e.epochs}",
                            info=f"loss {e.loss:.4f} acc {e.accuracy:.3f}")
        elif e.kind == "epoch":
            progress.console.print(f"epoch {e.epoch:>4}/{e.epochs}  loss {e.loss:.4f}  train acc {e.accuracy:.4f}  lr {e.lr:.5f}")
        elif e.kind == "evaluate":  # its own bar, counting test examples (not training steps)
            evaluation = progress.add_task("test split", total=e.steps, completed=e.step, info="examples")
        elif e.kind == "evaluate_batch" and evaluation is not None:
            progress.update(evaluation, completed=e.step, total=e.steps)

    try:
        with progress:
            result = run_training(r, out, data_dir=data_dir, on_event=on_event, overwrite=overwrite, device=dev,
                                  threads=threads)
    except KeyboardInterrupt:  # the app's error boundary prints "Interrupted." and exits 130
        console.print(f"Completed epochs are saved in {out / '.resume'}: rerun the same command to resume.")
        raise
    console.print(
        f"[bold green]Done:[/] test accuracy [bold]{result.test_accuracy:.4f}[/] (train {result.train_accuracy:.4f}), "
        f"{result.wall_time_s:.1f} s of training. Checkpoint: {result.run_dir}"
    )


def _resolve(reference: str, max_params: int, out, weights: bool = True):
    """The one resolver for a model reference (a folder, hf-hub:, a registry name), with its notices printed."""
    from ..hub.references import resolve_reference

    with out.status(f"resolving {reference}"):
        resolved = resolve_reference(reference, max_params=max_params, weights=weights)
    warn(resolved.notices)
    return resolved


def _needs_checkpoint(resolved, reference: str, command: str):
    from ..errors import InvalidReferenceError

    if resolved.checkpoint is None:
        raise InvalidReferenceError(f"{reference} is a timm model with no checkpoint folder or training record: `hubcompare "
                                    f"{command}` needs a folder, an hf-hub: or a registry reference of a trained model.")
    return resolved.checkpoint


def eval_(
    reference: ModelRef,
    data_dir: DataDir = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 500,
    write: Annotated[bool, typer.Option("--write", help="Store the recomputed predictions (and their hash) in the folder "
                                                       "(checkpoint folders only).")] = False,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    as_json: Json = False,
) -> None:
    """Recompute test accuracy and per-example predictions of a model (folder, hf-hub: or registry name)."""
    from ..hub.names import parse_reference
    from ..training.evaluate import evaluate_checkpoint

    set_threads(threads)
    dev = pick_device(device)
    out = progress_console(as_json)
    if write and parse_reference(reference).kind not in ("local-dir", "registry"):
        raise typer.BadParameter(f"{reference} is not a checkpoint folder: --write stores predictions in a folder you "
                                 "own (never in the Hugging Face cache).", param_hint="'--write'")
    resolved = _resolve(reference, max_params, out)
    ckpt = _needs_checkpoint(resolved, reference, "eval")
    if write and resolved.commit_sha is not None:
        raise typer.BadParameter(f"{reference} names a Hub model: --write stores predictions in a folder you own "
                                 "(never in the Hugging Face cache).", param_hint="'--write'")
    with Progress(TextColumn("evaluating"), BarColumn(bar_width=None), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=out, transient=True) as p:
        task = p.add_task("eval", total=None)
        report = evaluate_checkpoint(ckpt, data_dir, batch_size, write, on_batch=lambda done, n: p.update(task, completed=done, total=n),
                                     max_params=max_params, device=dev)
    preds = report.predictions
    result = {
        "reference": reference, "resolved": str(resolved.pinned), "commit_sha": resolved.commit_sha, "path": str(ckpt.path),
        "dataset": {k: preds.dataset.get(k) for k in ("name", "split", "fingerprint")}, "examples": len(preds.ids),
        "accuracy": preds.accuracy, "stored_accuracy": report.stored_accuracy,
        "agreement_with_stored": report.stored_predictions_agree, "max_abs_logit_diff": report.max_abs_logit_diff,
        "stored_predictions_error": report.stored_predictions_error, "device": report.device, "written": report.written,
    }
    problem = report.stored_predictions_error
    if problem and report.written:  # drop the advice to rerun with --write: that is what just happened
        head, _, advice = problem.rpartition("; ")
        warn([f"replaced the stored predictions, which were not usable: {head if 'eval --write' in advice else problem}"])
    elif problem:
        warn([f"the stored predictions were not compared: {problem}"])
    if as_json:
        print_json(result)
        return
    t = table(title=f"{reference} on {preds.dataset['name']} {preds.dataset['split']}", show_header=False)
    t.add_row("examples", f"{len(preds.ids):,}")
    t.add_row("accuracy (recomputed)", f"{preds.accuracy:.4f}")
    if report.stored_accuracy is not None:
        t.add_row("accuracy (stored)", f"{report.stored_accuracy:.4f}")
    if report.stored_predictions_agree is not None:
        t.add_row("argmax agreement with stored predictions", f"{report.stored_predictions_agree:.4f}")
        t.add_row("max |logit difference|", f"{report.max_abs_logit_diff:.2e}")
    if resolved.commit_sha:
        t.add_row("reference (pinned)", str(resolved.pinned))
    t.add_row("dataset fingerprint", preds.dataset["fingerprint"])
    t.add_row("device", device_label(dev))
    t.add_row("predictions written", "yes" if report.written else "no (use --write)" if resolved.commit_sha is None else "no")
    console.print(t)


def info(
    reference: ModelRef,
    as_json: Annotated[bool, typer.Option("--json", help="Print config.json's hubcompare block (plus what the reference "
                                                        "resolved to, under 'resolved') as JSON.")] = False,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
) -> None:
    """Show a model's card metadata and training provenance (folder, hf-hub: or registry name; no weights are read)."""
    from ..hub.names import parse_reference
    from ..models.card import read_card
    from ..models.checkpoint import CARD_FILE, load_checkpoint
    from ..models.metadata import ModelMeta

    ref = parse_reference(reference) if not Path(reference).expanduser().is_dir() else None
    if ref is None or ref.kind == "local-dir":  # a folder: no torch, no registry (info stays fast)
        ckpt = load_checkpoint(Path(ref.target if ref else reference))
        config, path, resolved = ckpt.config, ckpt.path, {"reference": reference, "commit_sha": None, "path": str(ckpt.path)}
    else:
        r = _resolve(reference, max_params, progress_console(as_json), weights=False)
        config, path = r.config, r.path
        resolved = {"reference": str(r.pinned), "commit_sha": r.commit_sha, "path": str(r.path),
                    "registry_name": r.registry_name}
    meta = ModelMeta.from_config(config)
    if as_json:
        print_json(meta.to_dict() | {"resolved": resolved})
        return
    t = table(title=reference, show_header=False)
    card_path = path / CARD_FILE
    if card_path.is_file():
        card = read_card(card_path)
        t.add_row("model", str(card.data.model_name))
        t.add_row("tags", ", ".join(map(str, card.data.tags or [])))
        for r in card.data.eval_results or []:
            value = r.metric_value
            t.add_row(f"{r.metric_type} ({r.dataset_name} {r.dataset_split})",
                      f"{value:.4f}" if isinstance(value, (int, float)) else str(value))
    if resolved["commit_sha"]:
        t.add_row("reference (pinned)", resolved["reference"])
    t.add_row("architecture", f"{config['architecture']} {json.dumps(config.get('model_args', {}))}")
    for key in ("dataset", "data_fraction", "seed", "epochs", "recipe_hash", "train_accuracy", "wall_time_s", "created_at"):
        if getattr(meta, key) is not None:
            t.add_row(key, str(getattr(meta, key)))
    if meta.device:
        t.add_row("device", " ".join(str(meta.device[k]) for k in ("type", "name", "capability") if meta.device.get(k)))
    for split, d in (("train_data", meta.train_data), ("test_data", meta.test_data)):
        if d:
            t.add_row(split, f"{d['num_examples']} examples, fingerprint {d['fingerprint']}, {d['source']}")
    if meta.package_versions:
        t.add_row("versions", ", ".join(f"{k} {v}" for k, v in meta.package_versions.items()))
    t.add_row("files", ", ".join(sorted(p.name for p in path.iterdir() if p.is_file())))
    console.print(t)
