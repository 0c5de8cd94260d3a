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
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointCorruptError, CheckpointFileMissingError
from .metadata import ModelMeta

__all__ = ["Checkpoint", "load_checkpoint", "WEIGHTS_FILE", "CONFIG_FILE", "CARD_FILE", "PREDICTIONS_FILE", "RESUME_DIR"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
PREDICTIONS_FILE = "predictions.safetensors"
RESUME_DIR = ".resume"  # an unfinished training run's state (see hubcompare.training.loop)


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
    if not run_dir.is_dir():
        raise CheckpointFileMissingError(f"checkpoint folder {run_dir} does not exist", run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        hint = " (training did not finish: train the same recipe into this folder again to resume)" if (run_dir / RESUME_DIR).is_dir() else ""
        raise CheckpointFileMissingError(f"{cfg_path} is missing: not a checkpoint folder{hint}", cfg_path)
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointCorruptError(f"{cfg_path} is not valid JSON ({e})", cfg_path) from e
    if not isinstance(config, dict) or "architecture" not in config:
        raise CheckpointCorruptError(f"{cfg_path} has no 'architecture' field: not a timm/hubcompare config", cfg_path)
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise CheckpointFileMissingError(
            f"{run_dir / WEIGHTS_FILE} is missing (hubcompare only loads safetensors weights)", run_dir / WEIGHTS_FILE
        )
    return Checkpoint(path=run_dir, config=config)
