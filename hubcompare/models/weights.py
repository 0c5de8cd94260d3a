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
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from timm.models._hub import save_config_for_hf

from ..errors import CheckpointCorruptError, CheckpointMismatchError, HubcompareError, ModelConfigError
from ..provenance import atomic_write_bytes, atomic_write_json, atomic_write_text
from . import resnet as _resnet  # noqa: F401  (registers cifar_resnet with timm before a config names it)
from .card import build_card
from .checkpoint import CARD_FILE, CONFIG_FILE, DEFAULT_MAX_PARAMS, PREDICTIONS_FILE, WEIGHTS_FILE, Checkpoint
from .guard import plan_build
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
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # CPU tensors, whatever the device
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


def load_model(ckpt: Checkpoint, max_params: int = DEFAULT_MAX_PARAMS) -> torch.nn.Module:
    """The checkpoint's model in eval mode, after checking its config (architecture, arguments, and a size
    estimate against ``max_params``: :func:`~hubcompare.models.guard.plan_build`) before anything is built,
    then its weights against the recorded hash and the model."""
    run_dir, config = ckpt.path, ckpt.config
    weights_path, cfg_path = run_dir / WEIGHTS_FILE, run_dir / CONFIG_FILE
    plan = plan_build(config, cfg_path, max_params)
    size = weights_path.stat().st_size
    if size > 8 * (plan.params + plan.buffers) + (1 << 24):  # float64 everything, plus a generous header
        raise CheckpointMismatchError(
            f"{weights_path} ({size:,} bytes) is larger than any weights of the model {cfg_path} describes "
            f"({plan.params + plan.buffers:,} numbers) could be", weights_path)
    data = weights_path.read_bytes()
    expected = ckpt.meta.weights_sha256
    if expected:
        if hashlib.sha256(data).hexdigest() != expected:
            raise CheckpointMismatchError(
                f"{weights_path} does not match the sha256 recorded in {cfg_path}: the weights were replaced "
                "or come from another run.",
                weights_path,
            )
    try:
        state = st_load(data)
    except Exception as e:  # SafetensorError, or what torch says about a header's dtype or shape
        raise CheckpointCorruptError(
            f"{weights_path} is not a readable safetensors file ({type(e).__name__}: {str(e)[:200]})", weights_path
        ) from e
    try:
        model = timm.create_model(plan.architecture, pretrained=False, pretrained_cfg_overlay=plan.overlay, **plan.kwargs)
    except HubcompareError as e:
        raise ModelConfigError(f"{cfg_path}: {e}", cfg_path) from e
    except Exception as e:  # what the architecture's constructor says about these arguments
        raise ModelConfigError(
            f"{cfg_path}: cannot build architecture {plan.architecture!r} ({type(e).__name__}: {str(e)[:200]})", cfg_path
        ) from e
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    common = sorted(set(own) & set(state))
    shapes = [k for k in common if own[k].shape != state[k].shape]
    dtypes = [k for k in common if own[k].dtype.is_floating_point != state[k].dtype.is_floating_point
              or state[k].dtype.is_complex]
    if missing or unexpected or shapes or dtypes:
        detail = "; ".join(
            f"{label}: {items[:3]}{' ...' if len(items) > 3 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes),
                                 ("dtype kind differs", dtypes))
            if items
        )
        raise CheckpointMismatchError(f"{weights_path} does not fit the model described by {cfg_path} ({detail})", weights_path)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # pragma: no cover - keys, shapes and dtypes were compared above
        raise CheckpointMismatchError(f"{weights_path} does not fit the model described by {cfg_path} ({e})", weights_path) from e
    return model.eval()
