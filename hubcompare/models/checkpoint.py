"""The checkpoint folder: the unit that is trained, pushed, pulled and compared.

Layout (timm-compatible, so ``timm.create_model("local-dir:RUN_DIR")`` and ``hf-hub:`` work)::

    model.safetensors        weights (last epoch)
    config.json              timm's layout (architecture, num_classes, model_args, pretrained_cfg)
                             + a "hubcompare" block: depth, width, data, recipe, accuracy, versions
    README.md                model card (huggingface_hub ModelCard)
    predictions.safetensors  test-set logits keyed by example id

Every file is written atomically and config.json last, so a folder with a config is complete.
Opening and validating a folder needs no torch (``info``, ``push`` and the registry start fast);
building its model is :mod:`.weights`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointCorruptError, CheckpointFileMissingError, ModelConfigError, short_repr
from .metadata import ModelMeta

__all__ = ["Checkpoint", "load_checkpoint", "check_config", "WEIGHTS_FILE", "CONFIG_FILE", "CARD_FILE", "PREDICTIONS_FILE",
           "RESUME_DIR", "DEFAULT_MAX_PARAMS", "PULL_FILES"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
PREDICTIONS_FILE = "predictions.safetensors"
RESUME_DIR = ".resume"  # an unfinished training run's state (see hubcompare.training.loop)
PULL_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, PREDICTIONS_FILE)  # all a pull downloads: what loading reads

# The most parameters (+ buffer elements) a config may describe before anything is built (``max_params``).
# The CIFAR family's largest member, ResNet-164 at width 10, has 259.4M; the curated timm entries at most
# 68.9M (wide_resnet50_2); vit_large_patch16_224 (304M) and vit_giant_patch14_224 (1.01B) need a higher limit.
DEFAULT_MAX_PARAMS = 300_000_000

# A plain timm architecture name, optionally with a pretrained tag (resnet50, resnet50.a1_in1k): never a
# source prefix (hf-hub:, local-dir:) or a path, which would make timm fetch another repo's config unpinned.
ARCHITECTURE_NAME = re.compile(r"[A-Za-z0-9_]{1,100}(\.[A-Za-z0-9_]{1,100})?")
MAX_CLASSES = 1_000_000
MAX_CONFIG_BYTES = 16 << 20
MAX_INPUT_SIDE = 1 << 14


@dataclass(eq=False)
class Checkpoint:
    """An opened, validated checkpoint folder (config parsed; build the model with
    :func:`~hubcompare.models.weights.load_model`, read predictions with
    :func:`~hubcompare.models.predictions.stored_predictions`)."""

    path: Path
    config: dict

    @property
    def meta(self) -> ModelMeta:
        """What describes the model (config.json's ``hubcompare`` block, or timm's keys for plain timm folders)."""
        return ModelMeta.from_config(self.config)

    @property
    def architecture(self) -> str:
        return self.config["architecture"]

    @property
    def has_predictions(self) -> bool:
        return (self.path / PREDICTIONS_FILE).is_file()


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Open and validate a checkpoint folder (config parsed now, weights checked when the model is built)."""
    run_dir = Path(run_dir).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointFileMissingError(f"{run_dir} is a file, not a checkpoint folder: give the folder that holds "
                                         "config.json and model.safetensors", run_dir)
    if not run_dir.is_dir():
        raise CheckpointFileMissingError(f"checkpoint folder {run_dir} does not exist", run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        hint = " (training did not finish: train the same recipe into this folder again to resume)" if (run_dir / RESUME_DIR).is_dir() else ""
        raise CheckpointFileMissingError(f"{cfg_path} is missing: not a checkpoint folder{hint}", cfg_path)
    size = cfg_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointCorruptError(f"{cfg_path} is {size:,} bytes: not a model config (they are kilobytes; at most "
                                     f"{MAX_CONFIG_BYTES:,} are read)", cfg_path)
    try:
        config = json.loads(cfg_path.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit number, deep nesting
        raise CheckpointCorruptError(f"{cfg_path} is not valid JSON ({type(e).__name__}: {str(e)[:200]})", cfg_path) from e
    if not isinstance(config, dict) or "architecture" not in config:
        raise CheckpointCorruptError(f"{cfg_path} has no 'architecture' field: not a timm/hubcompare config", cfg_path)
    check_config(config, cfg_path)
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise CheckpointFileMissingError(
            f"{run_dir / WEIGHTS_FILE} is missing (hubcompare only loads safetensors weights)", run_dir / WEIGHTS_FILE
        )
    return Checkpoint(path=run_dir, config=config)


def check_config(config: dict, cfg_path: Path) -> None:
    """Check what config.json says before anything reads it further: the architecture is a plain timm name,
    ``num_classes``, ``model_args`` and ``pretrained_cfg`` have the JSON types timm expects, and the
    ``hubcompare`` block parses. Argument names and values are checked against the architecture, and its size
    against ``max_params``, when the model is built (:func:`hubcompare.models.weights.load_model`)."""

    def fail(message: str, cls: type[CheckpointCorruptError] = ModelConfigError) -> None:
        raise cls(f"{cfg_path}: {message}", cfg_path)

    arch = config.get("architecture")
    if not isinstance(arch, str) or not ARCHITECTURE_NAME.fullmatch(arch):
        fail(f"'architecture' must be a timm architecture name such as cifar_resnet or resnet50, not {short_repr(arch)}"
             + (": a config cannot point at another repo or folder" if isinstance(arch, str) and (":" in arch or "/" in arch) else ""))
    if "num_classes" in config and not is_int(config["num_classes"], 0, MAX_CLASSES):
        fail(f"'num_classes' must be an integer from 0 to {MAX_CLASSES:,}, not {short_repr(config['num_classes'])}")
    args = config.get("model_args")
    if args is not None and not isinstance(args, dict):
        fail(f"'model_args' must be a JSON object of keyword arguments, not {short_repr(args)}")
    cfg = config.get("pretrained_cfg")
    if cfg is not None:
        if not isinstance(cfg, dict):
            fail(f"'pretrained_cfg' must be a JSON object, not {short_repr(cfg)}")
        _check_pretrained_cfg(cfg, fail)
    try:
        ModelMeta.from_config(config)
    except CheckpointCorruptError as e:
        fail(str(e), CheckpointCorruptError)


def _check_pretrained_cfg(cfg: dict, fail) -> None:
    """The ``pretrained_cfg`` keys that shape the model or its inputs have the types timm gives them."""
    for key in ("input_size", "test_input_size", "min_input_size"):
        value = cfg.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 3
                                      and all(is_int(v, 1, MAX_INPUT_SIDE) for v in value)):
            fail(f"pretrained_cfg's {key!r} must be [channels, height, width] (integers from 1 to {MAX_INPUT_SIDE}), "
                 f"not {short_repr(value)}")
    for key in ("mean", "std"):
        value = cfg.get(key)
        if value is not None and not (isinstance(value, list) and 1 <= len(value) <= MAX_INPUT_SIDE
                                      and all(_is_number(v) and (key == "mean" or v > 0) for v in value)):
            fail(f"pretrained_cfg's {key!r} must be a list of finite numbers{' > 0' if key == 'std' else ''}, "
                 f"not {short_repr(value)}")
    for key, check, what in (
        ("num_classes", lambda v: is_int(v, -1, MAX_CLASSES), f"an integer from -1 to {MAX_CLASSES:,}"),
        ("fixed_input_size", lambda v: isinstance(v, bool), "true or false"),
        ("crop_pct", lambda v: _is_number(v) and 0 < v <= 16, "a number in (0, 16]"),
        ("interpolation", lambda v: isinstance(v, str), "a string"),
        ("crop_mode", lambda v: isinstance(v, str), "a string"),
        ("first_conv", lambda v: isinstance(v, (str, list)), "a layer name or a list of them"),
        ("classifier", lambda v: isinstance(v, (str, list)), "a layer name or a list of them"),
    ):
        if cfg.get(key) is not None and not check(cfg[key]):
            fail(f"pretrained_cfg's {key!r} must be {what}, not {short_repr(cfg[key])}")


def is_int(value: Any, low: int, high: int) -> bool:
    """An int (not a bool) in [low, high]: what a JSON integer field of a config must be."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

