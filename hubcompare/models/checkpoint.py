"""The checkpoint folder: the unit that is trained, pushed, pulled and compared.

Layout (timm-compatible, so ``timm.create_model("local-dir:RUN_DIR")`` and ``hf-hub:`` work)::

    model.safetensors        weights (last epoch)
    config.json              timm's layout (architecture, num_classes, model_args, pretrained_cfg)
                             + a "hubcompare" block: depth, width, data, recipe, accuracy, versions
    README.md                model card (huggingface_hub ModelCard)
    predictions.safetensors  test-set logits keyed by example id

Every file is written atomically and config.json last, so a folder with a config is complete.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from timm.models._hub import save_config_for_hf

from .card import build_card
from .metadata import ModelMeta
from ..errors import (
    CheckpointCorruptError,
    CheckpointFileMissingError,
    CheckpointMismatchError,
    HubcompareError,
)
from .predictions import PREDICTIONS_FILE, Predictions
from ..provenance import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file

__all__ = ["Checkpoint", "write_checkpoint", "load_checkpoint", "WEIGHTS_FILE", "CONFIG_FILE", "CARD_FILE"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"


def write_checkpoint(
    run_dir: str | Path,
    model: torch.nn.Module,
    meta: ModelMeta,
    predictions: Predictions | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write weights, predictions, card and (last) config.json into ``run_dir``; returns config's path.

    ``model`` must come from ``timm.create_model`` (it needs ``pretrained_cfg``); ``meta`` becomes
    the config's ``hubcompare`` block, completed here with the files' hashes.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = replace(meta)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights = st_save(state, metadata={"format": "pt"})
    atomic_write_bytes(run_dir / WEIGHTS_FILE, weights)
    meta.weights_sha256 = hashlib.sha256(weights).hexdigest()
    if predictions is not None:
        meta.predictions = predictions.save(run_dir / PREDICTIONS_FILE)
    config = timm_config(model, meta)
    atomic_write_text(run_dir / CARD_FILE, str(build_card(meta, repo_id=repo_id)))
    return atomic_write_json(run_dir / CONFIG_FILE, config)


def timm_config(model: torch.nn.Module, meta: ModelMeta) -> dict:
    """config.json as timm's ``save_config_for_hf`` writes it, plus the ``hubcompare`` block."""
    block = meta.to_dict()
    model_args = {k: block[k] for k in ("depth", "width", "in_chans", "bn_momentum", "bn_eps") if k in block}
    with tempfile.TemporaryDirectory() as tmp:
        save_config_for_hf(model, Path(tmp) / CONFIG_FILE, model_args=model_args)
        config = json.loads((Path(tmp) / CONFIG_FILE).read_text())
    config["hubcompare"] = block
    return config


@dataclass(eq=False)
class Checkpoint:
    """A loaded checkpoint folder. ``model`` is built lazily and returned in eval mode."""

    path: Path
    config: dict

    @property
    def meta(self) -> ModelMeta:
        """What describes the model (config.json's ``hubcompare`` block, or timm's keys for plain timm folders)."""
        return ModelMeta.from_config(self.config)

    @property
    def architecture(self) -> str:
        return self.config["architecture"]

    @cached_property
    def model(self) -> torch.nn.Module:
        return _build_model(self.path, self.config)

    @property
    def has_predictions(self) -> bool:
        return (self.path / PREDICTIONS_FILE).is_file()

    def predictions(self) -> Predictions:
        preds = Predictions.load(self.path / PREDICTIONS_FILE)
        expected = (self.meta.predictions or {}).get("sha256")
        if expected and sha256_file(self.path / PREDICTIONS_FILE) != expected:
            raise CheckpointMismatchError(
                f"{self.path / PREDICTIONS_FILE} does not match the sha256 recorded in {CONFIG_FILE}: "
                "it was replaced or modified; regenerate it with `hubcompare eval`.",
                self.path / PREDICTIONS_FILE,
            )
        num_classes = self.config.get("num_classes")
        if num_classes is not None and preds.logits.shape[1] != num_classes:
            raise CheckpointMismatchError(
                f"{self.path / PREDICTIONS_FILE} has {preds.logits.shape[1]} classes but {CONFIG_FILE} says {num_classes}",
                self.path / PREDICTIONS_FILE,
            )
        return preds


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Open and validate a checkpoint folder (config parsed now, weights checked when the model is built)."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise CheckpointFileMissingError(f"checkpoint folder {run_dir} does not exist", run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        hint = " (training did not finish: train the same recipe into this folder again to resume)" if (run_dir / ".resume").is_dir() else ""
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


def _build_model(run_dir: Path, config: dict) -> torch.nn.Module:
    weights_path, cfg_path = run_dir / WEIGHTS_FILE, run_dir / CONFIG_FILE
    data = weights_path.read_bytes()
    expected = config.get("hubcompare", {}).get("weights_sha256")
    if expected:
        if hashlib.sha256(data).hexdigest() != expected:
            raise CheckpointMismatchError(
                f"{weights_path} does not match the sha256 recorded in {cfg_path}: the weights were replaced "
                "or come from another run.",
                weights_path,
            )
    try:
        state = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointCorruptError(f"{weights_path} is not a readable safetensors file ({e})", weights_path) from e
    model_args = dict(config.get("model_args", {}))
    pretrained_cfg = dict(config.get("pretrained_cfg", {}))
    model_args.setdefault("in_chans", (pretrained_cfg.get("input_size") or [3])[0])
    model_args["num_classes"] = config.get("num_classes", model_args.get("num_classes", 1000))
    try:
        model = timm.create_model(
            config["architecture"], pretrained=False, pretrained_cfg_overlay=pretrained_cfg, **model_args,
        )
    except HubcompareError as e:
        raise CheckpointCorruptError(f"{cfg_path}: {e}", cfg_path) from e
    except RuntimeError as e:  # timm: unknown model
        raise CheckpointCorruptError(f"{cfg_path}: cannot build architecture {config['architecture']!r} ({e})", cfg_path) from e
    missing, unexpected = [], []
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        detail = "; ".join(
            f"{label}: {items[:3]}{' ...' if len(items) > 3 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs", sorted(shapes)))
            if items
        )
        raise CheckpointMismatchError(f"{weights_path} does not fit the model described by {cfg_path} ({detail})", weights_path)
    model.load_state_dict(state)
    return model.eval()
