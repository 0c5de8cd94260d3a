"""Re-evaluating a checkpoint folder: recompute its test-set predictions and compare with the stored ones."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..data.datasets import load_dataset
from ..errors import CheckpointError, CheckpointMismatchError
from ..models.checkpoint import CONFIG_FILE, DEFAULT_MAX_PARAMS, PREDICTIONS_FILE, Checkpoint
from ..models.devices import resolve_device
from ..models.predictions import Predictions, predict, stored_predictions
from ..models.weights import load_model
from ..provenance import atomic_write_json

__all__ = ["EvalReport", "evaluate_checkpoint"]


@dataclass
class EvalReport:
    predictions: Predictions
    stored_accuracy: float | None  # from config.json
    stored_predictions_agree: float | None  # share of examples whose argmax matches the stored file
    max_abs_logit_diff: float | None
    written: bool
    stored_predictions_error: str | None = None  # why the stored predictions could not be compared (unreadable, replaced)

    @property
    def device(self) -> dict | None:
        """What the predictions were recomputed on (:func:`~hubcompare.models.devices.describe_device`)."""
        return self.predictions.device


def evaluate_checkpoint(
    ckpt: Checkpoint,
    data_dir: str | Path | None = None,
    batch_size: int = 500,
    write: bool = False,
    on_batch=None,
    max_params: int = DEFAULT_MAX_PARAMS,
    device: str | torch.device = "cpu",
) -> EvalReport:
    """Recompute predictions on the checkpoint's test split on ``device``; optionally store them (and their hash).

    The stored predictions are compared only when they can be read and match their recorded hash; otherwise the
    report says why (``stored_predictions_error``) and ``write=True`` replaces them: this is how a corrupt or
    replaced predictions file is repaired.
    """
    dev = resolve_device(device)
    meta = ckpt.meta
    dataset = meta.dataset
    if dataset is None:
        raise CheckpointMismatchError(f"{ckpt.path / CONFIG_FILE} records no dataset (not trained by hubcompare)", ckpt.path / CONFIG_FILE)
    test = load_dataset(dataset, "test", data_dir)
    recorded = meta.test_fingerprint
    if recorded and recorded != test.fingerprint:
        raise CheckpointMismatchError(
            f"the {dataset} test split found here (fingerprint {test.fingerprint}) is not the one this model was "
            f"evaluated on ({recorded}); load the same copy of the data it was evaluated on.",
            ckpt.path / CONFIG_FILE, params=("data_dir",),
        )
    preds = predict(load_model(ckpt, max_params), test, batch_size=batch_size, on_batch=on_batch, device=dev)
    agree = diff = stored = unreadable = None
    if ckpt.has_predictions:
        try:
            stored = stored_predictions(ckpt)
        except CheckpointError as e:
            unreadable = str(e)
    if stored is not None:
        if stored.ids == preds.ids and stored.logits.shape == preds.logits.shape:
            agree = float((stored.predicted == preds.predicted).double().mean())
            diff = float((stored.logits - preds.logits).abs().max())
    if write:
        meta = replace(meta, predictions=preds.save(ckpt.path / PREDICTIONS_FILE))
        config = dict(ckpt.config) | {"hubcompare": meta.to_dict()}
        atomic_write_json(ckpt.path / CONFIG_FILE, config)
        ckpt.config = config
    return EvalReport(preds, meta.test_accuracy, agree, diff, write, unreadable)
