"""CLI commands asking what a block does: probes (linear probes per layer) and delete-blocks (Typer + rich)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from ..probes.summary import deletion_sentence, probe_sentence
from .compare import Dataset, Layers
from .options import (
    seed_range,
    DataDir,
    Device,
    FigureFormat,
    MaxParams,
    Threads,
    finite,
    progress_console,
    slug,
    warn,
    writable_folder,
    wrote,
)
from .output import Json, plural, print_json, table
from .stored import Recompute, TrustPulled, default_out, run_stored, stored_json

Ref = Annotated[str, typer.Argument(help="A model reference (checkpoint folder, hf-hub:, timm:, registry name).")]
Out = Annotated[Optional[Path], typer.Option("--out", callback=writable_folder,
                                             help="Folder for the figure/JSON/CSV (default: results/<command>-<model>-<KEY8>, KEY8 the result key's first 8 hex digits: another request never overwrites it).")]
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
    """The blocks listed in a blocks JSON file, or the --blocks error saying why it is none."""
    from ..comparisons.probe_kinds import read_blocks
    from ..errors import InvalidRequestError

    try:
        return read_blocks(value)
    except InvalidRequestError as e:
        raise typer.BadParameter(str(e).removeprefix("options.blocks: "), param_hint="'--blocks'") from None


def _run(kind: str, ref: str, *, layers, dataset, data_dir, batch_size, examples, seed: int, options: dict, fmt: str,
         out, recompute: bool, threads, max_params: int, device: str, json_out: bool, con,
         trust_pulled: bool = False):
    """The stored result of ``kind`` on ``ref`` or a fresh one (stored), written to ``--out`` as a fresh run writes it.
    Returns its JSON and the files written (the JSON, the CSV, the figure)."""
    from ..comparisons.requests import ComparisonRequest
    from ..comparisons.run import export, files_of

    if options.get("blocks") not in (None, "auto", "none"):
        _read_blocks(options["blocks"])  # a file that is no blocks JSON is refused before any work
    req = ComparisonRequest(kind, (ref,), dataset, layers=tuple(layers) if layers else None, batch_size=batch_size, seed=seed,
                            examples=examples, options=options, fmt=fmt)
    outcome = run_stored(req, con, recompute=recompute, trust_pulled=trust_pulled, data_dir=data_dir, threads=threads,
                         max_params=max_params, device=device)
    warn(outcome.warnings)  # e.g. a model fed data unlike its training data
    out = out or default_out(f"{kind}-{slug(ref)}", outcome, req)
    files = export(outcome, req, out)
    doc = json.loads(files_of(req, files, "document")[0].read_text())
    if json_out:
        print_json(doc | {"files": [str(f) for f in files]} | stored_json(outcome))
        wrote(files, json_out)
    return doc, files


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
    seed: Annotated[int, typer.Option("--seed", min=0, callback=seed_range, help="Seed of the validation draw.")] = 0,
    blocks: Annotated[str, typer.Option("--blocks", callback=_blocks_option, help=BLOCKS_HELP)] = "auto",
    out: Out = None,
    threads: Threads = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    fmt: FigureFormat = "png",
    recompute: Recompute = False,
    trust_pulled: TrustPulled = False,
    json_out: Json = False,
) -> None:
    """Linear probes (softmax regression on frozen features) on every layer: before and after each residual add.

    Fit on the training split, the L2 chosen on a held-out part of it, reported on the test split.
    """
    from ..comparisons.probe_kinds import probe_result_from_json

    con = progress_console(json_out)
    options = {"pool": pool, "validation_fraction": validation_fraction, "train_examples": train_examples,
               "max_iter": max_iter, "memory_gb": memory_gb, "blocks": blocks}
    if l2:
        options["l2"] = list(l2)
    doc, files = _run("probes", ref, layers=layers, dataset=dataset, data_dir=data_dir, batch_size=batch_size,
                      examples=examples, seed=seed, options={k: v for k, v in options.items() if v is not None}, fmt=fmt,
                      out=out, recompute=recompute, threads=threads, max_params=max_params, device=device,
                      json_out=json_out, con=con, trust_pulled=trust_pulled)
    if json_out:
        return
    result = probe_result_from_json(doc)
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
    con.print(escape(probe_sentence(result)), soft_wrap=True, highlight=False)
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
    recompute: Recompute = False,
    trust_pulled: TrustPulled = False,
    json_out: Json = False,
) -> None:
    """Delete residual blocks from the end of each stage backwards (identity path kept, no retraining): test accuracy
    after each deletion (the paper's Figure 5)."""
    from ..comparisons.probe_kinds import deletion_result_from_json

    con = progress_console(json_out)
    doc, files = _run("delete-blocks", ref, layers=None, dataset=dataset, data_dir=data_dir, batch_size=batch_size,
                      examples=examples, seed=0, options={"blocks": blocks}, fmt=fmt, out=out, recompute=recompute,
                      threads=threads, max_params=max_params, device=device, json_out=json_out, con=con, trust_pulled=trust_pulled)
    if json_out:
        return
    result = deletion_result_from_json(doc)
    full = result.full_accuracy
    t = table("stage", "blocks deleted", "first deleted", "test accuracy", "change from full",
              title=f"{escape(ref)}: block deletion (full model {full:.4f}; change: negative is accuracy lost)")
    for r in result.rows():
        if r["deleted"]:
            t.add_row(str(r["stage"]), str(r["deleted"]), r["first_deleted"], f"{r['accuracy']:.4f}", f"{r['accuracy'] - full:+.4f}")
    con.print(t)
    con.print(escape(deletion_sentence(result)), soft_wrap=True, highlight=False)
    kept = [b["layer"] for b in result.residual_blocks if not b["deletable"]]
    if kept:
        con.print(f"kept (projection shortcut): {escape(', '.join(kept))}", soft_wrap=True, highlight=False)
    wrote(files)
