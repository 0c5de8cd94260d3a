"""CLI commands asking what a block does: probes (linear probes per layer) and delete-blocks (Typer + rich)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .compare import Dataset, Layers
from .options import (
    SEED_MAX,
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
    writable_folder,
    wrote,
)
from .output import Json, plural, print_json, table

Ref = Annotated[str, typer.Argument(help="A model reference (checkpoint folder, hf-hub:, timm:, registry name).")]
Out = Annotated[Optional[Path], typer.Option("--out", callback=writable_folder,
                                             help="Folder for the figure/JSON/CSV (default: results/<command>-<model>).")]
Examples = Annotated[Optional[int], typer.Option("--examples", min=1, help="Use only the first N test examples.")]
BLOCKS_HELP = ("Detected blocks to shade: auto (run `hubcompare blocks`' detector on the test split, its defaults), none, "
               "or a JSON file written by `hubcompare blocks` (or by probes / delete-blocks).")


def _positive(value):
    """For float options (one or a list): finite numbers > 0."""
    for v in value if isinstance(value, list) else [value]:
        if v is not None and not (finite(v) > 0):
            raise typer.BadParameter(f"{v} is not a number > 0.")
    return value


def _share(value: float) -> float:
    """For a share of the data: strictly between 0 and 1."""
    if not 0 < finite(value) < 1:
        raise typer.BadParameter(f"{value} is not a number strictly between 0 and 1.")
    return value


def _blocks_option(value: str) -> str:
    if value in ("auto", "none"):
        return value
    path = Path(value)
    if not path.is_file():
        raise typer.BadParameter(f"{value!r} is not auto, none or a JSON file written by `hubcompare blocks`.",
                                 param_hint="'--blocks'")
    return value


def _read_blocks(value: str) -> list[dict]:
    """The blocks listed in a blocks.json (``blocks``) or a probes/deletion JSON (``detected_blocks``)."""
    try:
        data = json.loads(Path(value).read_text(encoding="utf-8"))
        listed = data["blocks"] if "blocks" in data else data["detected_blocks"]
        if not all(isinstance(b, dict) and isinstance(b.get("layers"), list) for b in listed):
            raise ValueError("a block without its list of layers")
        return listed
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise typer.BadParameter(f"{value} is not a blocks JSON from `hubcompare blocks` ({type(e).__name__}: "
                                 f"{str(e)[:120]}).", param_hint="'--blocks'") from None


def _progress(con, description: str, run):
    """Run ``run(on_step)`` under a rich progress bar (on stderr under --json)."""
    with Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=con) as p:
        task = p.add_task(description, total=None)
        return run(lambda d, n: p.update(task, completed=d, total=n))


def _load(ref: str, layers, dataset: Optional[str], data_dir, threads, max_params: int, device: str, con):
    """Threads, the device, the model (with its provenance) and the test split of its dataset (or ``dataset``)."""
    from ..hub.references import resolve_reference
    from ..similarity.engine import CompareModel, comparison_dataset

    set_threads(threads)
    dev = pick_device(device)
    with con.status(f"loading {escape(ref)}"):
        m = CompareModel.from_resolved(resolve_reference(ref, max_params=max_params), layers, ref=ref)
    return m, comparison_dataset([m], dataset, "test", data_dir), dev


def _detect(blocks: str, m, test, examples: Optional[int], dev, con) -> tuple[list[dict], dict]:
    """The blocks to shade and where they came from."""
    from dataclasses import asdict

    from ..similarity.blocks import analyze_blocks
    from ..similarity.engine import CompareModel

    if blocks == "none":
        return [], {"source": "none"}
    if blocks != "auto":
        return _read_blocks(blocks), {"source": str(blocks)}
    plain = CompareModel(m.ref, m.model, m.provenance)  # the detector's own default layers
    rep = _progress(con, f"blocks: CKA on {test.name} test ({device_label(dev)})", lambda on_batch: analyze_blocks(
        plain, test, num_examples=examples, on_batch=on_batch, device=dev))
    found = [asdict(b) | {"size": b.size} for b in rep.blocks]
    return found, {"source": "detected here (hubcompare blocks' defaults, test split)", "criteria": rep.params,
                   "layers": rep.pcs.layers}


def probes(
    ref: Ref,
    layers: Layers = None,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    pool: Annotated[bool, typer.Option("--pool/--no-pool", help="2x2 max-pool feature maps before the probe (the paper's way "
                                                                "of keeping wide layers tractable); recorded.")] = False,
    l2: Annotated[Optional[list[float]], typer.Option("--l2", callback=_positive,
                                                      help="L2 penalties to choose from on the validation part (repeatable; "
                                                           "default 1e-4 1e-3 1e-2 1e-1).", show_default=False)] = None,
    validation_fraction: Annotated[float, typer.Option("--validation-fraction", callback=_share, help="Share of the training split held out to choose "
                                                                             "the L2 (class-stratified).")] = 0.1,
    train_examples: Annotated[Optional[int], typer.Option("--train-examples", min=2, help="Fit on a seeded class-stratified "
                                                          "subset of N training examples (default: all).")] = None,
    examples: Examples = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Minibatch size of the feature passes.")] = 256,
    max_iter: Annotated[int, typer.Option("--max-iter", min=1, help="L-BFGS iterations per fit, at most.")] = 200,
    memory_gb: Annotated[float, typer.Option("--memory-gb", callback=_positive,
                                             help="Features held at once (GiB): layers are probed in groups that fit.")] = 2.0,
    seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="Seed of the validation draw.")] = 0,
    blocks: Annotated[str, typer.Option("--blocks", callback=_blocks_option, help=BLOCKS_HELP)] = "auto",
    out: Out = None,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    fmt: FigureFormat = "png",
    json_out: Json = False,
) -> None:
    """Linear probes (softmax regression on frozen features) on every layer: before and after each residual add.

    Fit on the training split, the L2 chosen on a held-out part of it, reported on the test split.
    """
    from ..data.datasets import load_dataset
    from ..probes.linear import DEFAULT_L2_GRID, probe_layers
    from ..probes.plots import plot_probes
    from ..provenance import atomic_write_json, atomic_write_text

    con = progress_console(json_out)
    m, test, dev = _load(ref, layers, dataset, data_dir, threads, max_params, device, con)
    train = load_dataset(test.name, "train", data_dir)
    out = out or Path("results") / f"probes-{slug(ref)}"
    result = _progress(con, f"probes on {test.name} ({device_label(dev)})", lambda on_step: probe_layers(
        m, train, test, pool, l2 or DEFAULT_L2_GRID, validation_fraction, seed, batch_size, train_examples, examples,
        max_iter, int(memory_gb * 2**30), on_step=on_step, device=dev))
    result.blocks, result.settings["blocks"] = _detect(blocks, m, test, examples, dev, con)
    files = [atomic_write_json(out / "probes.json", result.to_json()), atomic_write_text(out / "probes.csv", result.to_csv()),
             plot_probes(result, out / f"probes.{fmt}")]
    if json_out:
        print_json(result.to_json() | {"files": [str(f) for f in files]})
        wrote(files, json_out)
        return
    t = table("#", "layer", "kind", "features", "L2", "validation", "test", title=f"{escape(ref)}: linear probes "
              f"(pooling {result.settings['pooling']})")
    for r in result.layers:
        t.add_row(str(r["index"]), r["name"], r["kind"], f"{r['features']:,}", f"{r['chosen_l2']:g}",
                  f"{r['validation_accuracy']:.4f}", f"{r['test_accuracy']:.4f}")
    con.print(t)
    last = result.layers[-1]
    own = result.model_test_accuracy
    con.print(f"last layer {escape(last['name'])}: probe {last['test_accuracy']:.4f}"
              + (f", the model's own head {own:.4f}" if own is not None else "")
              + f"; {plural(len(result.blocks), 'detected block')} shaded", soft_wrap=True, highlight=False)
    wrote(files)


def delete_blocks(
    ref: Ref,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    examples: Examples = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Minibatch size of the evaluations.")] = 500,
    blocks: Annotated[str, typer.Option("--blocks", callback=_blocks_option, help=BLOCKS_HELP)] = "auto",
    out: Out = None,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    fmt: FigureFormat = "png",
    json_out: Json = False,
) -> None:
    """Delete residual blocks from the end of each stage backwards (identity path kept, no retraining): test accuracy
    after each deletion (the paper's Figure 5)."""
    from ..probes.deletion import delete_blocks as run_deletion
    from ..probes.deletion import residual_stages
    from ..probes.plots import plot_deletion
    from ..provenance import atomic_write_json, atomic_write_text

    con = progress_console(json_out)
    m, test, dev = _load(ref, None, dataset, data_dir, threads, max_params, device, con)
    residual_stages(m.model)  # refuse a model without deletable blocks before any evaluation
    out = out or Path("results") / f"delete-blocks-{slug(ref)}"
    result = _progress(con, f"deleting blocks, {test.name} test ({device_label(dev)})", lambda on_step: run_deletion(
        m, test, batch_size, examples, on_step=on_step, device=dev))
    result.blocks, result.settings["blocks"] = _detect(blocks, m, test, examples, dev, con)
    files = [atomic_write_json(out / "deletion.json", result.to_json()), atomic_write_text(out / "deletion.csv", result.to_csv()),
             plot_deletion(result, out / f"deletion.{fmt}")]
    if json_out:
        print_json(result.to_json() | {"files": [str(f) for f in files]})
        wrote(files, json_out)
        return
    t = table("stage", "blocks deleted", "first deleted", "test accuracy", "drop",
              title=f"{escape(ref)}: block deletion (full model {result.full_accuracy:.4f})")
    for r in result.rows():
        if r["deleted"]:
            t.add_row(str(r["stage"]), str(r["deleted"]), r["first_deleted"], f"{r['accuracy']:.4f}", f"{r['drop']:+.4f}")
    con.print(t)
    kept = [b["layer"] for b in result.residual_blocks if not b["deletable"]]
    if kept:
        con.print(f"kept (projection shortcut): {escape(', '.join(kept))}", soft_wrap=True, highlight=False)
    wrote(files)
