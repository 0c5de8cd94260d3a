"""What a grid run's folder holds, read from the folder itself (never from ``grid.json``). No printing.

A run trains into ``POPULATION/NAME``. With a fit rule (``until_fit``, :class:`~.gridspec.FitRule`) a run
is a ladder of rungs: its recipe, then the same recipe with each longer epoch count. A finished rung
that does not fit (its last epoch's train accuracy is below the rule's) is moved aside, whole, to
``POPULATION/underfit/NAME-eEPOCHS/`` and the next rung trains into ``NAME`` from scratch. So the
folders alone say where a run stands, in this session or a later one:

- ``NAME`` holds a finished checkpoint of rung i: finished when it fits or i is the last rung, else
  under-fit (to be moved aside);
- ``NAME`` holds the resume state of rung j: resume rung j;
- otherwise: new, at the rung after the highest one kept in ``underfit/``;
- a checkpoint or resume state of no rung's recipe: stale (reported, or started over with overwrite).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..models.checkpoint import CONFIG_FILE, RESUME_DIR
from .gridspec import FitRule, GridPoint

__all__ = ["RunState", "UNDERFIT_DIR", "finished_block", "resume_hash", "inspect_run", "kept_rungs", "set_aside"]

UNDERFIT_DIR = "underfit"


def finished_block(run_dir: Path) -> dict | None:
    """config.json's hubcompare block when the folder holds a finished checkpoint (config.json is written last);
    ``{}`` when config.json is there but unreadable, None when there is none."""
    try:
        block = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")).get("hubcompare")
    except (OSError, ValueError, AttributeError):
        return None if not (run_dir / CONFIG_FILE).exists() else {}
    return block if isinstance(block, dict) else {}


def resume_hash(run_dir: Path) -> str | None:
    """The recipe hash in the resume state's safetensors header ('' when unreadable, None when there is none)."""
    path = run_dir / RESUME_DIR / "state.safetensors"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(n, 1 << 24)))
        return str(header.get("__metadata__", {}).get("recipe_hash", ""))
    except (OSError, ValueError, struct.error, AttributeError):
        return ""


@dataclass(frozen=True)
class RunState:
    """state: finished | underfit | resume | new | stale; rung: the rung the folder holds (finished, underfit,
    resume) or the rung to train next (new, stale); kept: the under-fit rungs kept in ``underfit/``."""

    state: str
    rung: int = 0
    why: str = ""
    block: dict | None = None
    kept: list[dict] = field(default_factory=list)


def _rung_record(rung: int, block: dict, kept: str | None) -> dict:
    return {"rung": rung, "epochs": block.get("epochs"), "recipe_hash": block.get("recipe_hash"), "train_accuracy": block.get("train_accuracy"),
            "test_accuracy": block.get("test_accuracy"), "kept": kept}


def kept_rungs(point: GridPoint, out: Path) -> list[dict]:
    """The rungs of ``point`` trained before and kept in ``out/underfit`` (one record each, by rung)."""
    ladder, found = point.ladder, []
    if len(ladder) < 2 or not (out / UNDERFIT_DIR).is_dir():
        return found
    for i, recipe in enumerate(ladder[:-1]):
        base = f"{point.name}-e{recipe['train']['epochs']}"
        for d in sorted((out / UNDERFIT_DIR).glob(f"{base}*")):
            block = finished_block(d)
            suffix = d.name[len(base):]
            if (not suffix or suffix[:1] == "-" and suffix[1:].isdigit()) and block and block.get("recipe_hash") == recipe.hash:
                found.append(_rung_record(i, block, f"{UNDERFIT_DIR}/{d.name}"))
                break
    return found


def inspect_run(point: GridPoint, run_dir: Path, rule: FitRule | None, out: Path) -> RunState:
    """Where the run stands (see the module's docstring)."""
    ladder = point.ladder
    hashes = {r.hash: i for i, r in enumerate(ladder)}
    kept = kept_rungs(point, out)
    start = min(len(ladder) - 1, max((k["rung"] for k in kept), default=-1) + 1)
    block = finished_block(run_dir)
    if block is not None:
        rung = hashes.get(block.get("recipe_hash"))
        if rung is not None:
            fits = rule is None or rung == len(ladder) - 1 or rule.fits(block.get("train_accuracy"))
            return RunState("finished" if fits else "underfit", rung, "", block, kept)
        what = f"of another recipe (hash {block['recipe_hash']}, this run's is {point.recipe.hash})" if block.get("recipe_hash") \
            else f"whose {CONFIG_FILE} is unreadable or not a hubcompare run's"
        return RunState("stale", start, f"{run_dir} holds a finished checkpoint {what}: retrain it (overwrite), delete "
                                        "it, or choose another population folder", kept=kept)
    resume = resume_hash(run_dir)
    if resume is None:
        return RunState("new", start, kept=kept)
    if resume in hashes:
        return RunState("resume", hashes[resume], kept=kept)
    what = "unreadable resume state" if resume == "" else f"resume state of another recipe (hash {resume})"
    return RunState("stale", start, f"{run_dir} holds {what}: start it over (overwrite), delete {run_dir / RESUME_DIR}, "
                                    "or choose another population folder", kept=kept)


def set_aside(point: GridPoint, run_dir: Path, out: Path, state: RunState) -> dict:
    """Move an under-fit finished rung, whole, to ``out/underfit/NAME-eEPOCHS`` (``-2``, ``-3``... when taken);
    returns its rung record."""
    epochs = point.ladder[state.rung]["train"]["epochs"]
    (out / UNDERFIT_DIR).mkdir(parents=True, exist_ok=True)
    target, n = out / UNDERFIT_DIR / f"{point.name}-e{epochs}", 1
    while target.exists() or target.is_symlink():
        n += 1
        target = out / UNDERFIT_DIR / f"{point.name}-e{epochs}-{n}"
    os.replace(run_dir, target)
    return _rung_record(state.rung, state.block or {}, f"{UNDERFIT_DIR}/{target.name}")
