"""Building a checkpoint folder's model from its weights, and writing a folder from a trained model.

The torch side of :mod:`.checkpoint`: weights are checked against the sha256 in config.json and
against the architecture before they are loaded; every file is written atomically, config.json last.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from timm.models._hub import save_config_for_hf

from ..errors import CheckpointCorruptError, CheckpointMismatchError, HubcompareError
from ..provenance import atomic_write_bytes, atomic_write_json, atomic_write_text
from . import resnet as _resnet  # noqa: F401  (registers cifar_resnet with timm before a config names it)
from .card import build_card
from .checkpoint import CARD_FILE, CONFIG_FILE, PREDICTIONS_FILE, WEIGHTS_FILE, Checkpoint
from .metadata import ModelMeta
from .predictions import Predictions

__all__ = ["load_model", "write_checkpoint", "timm_config"]


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


def load_model(ckpt: Checkpoint) -> torch.nn.Module:
    """The checkpoint's model in eval mode, after checking its weights against the recorded hash and the config."""
    run_dir, config = ckpt.path, ckpt.config
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
