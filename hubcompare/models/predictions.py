"""Per-example predictions: computing them in batches, and their safetensors file format.

Stored next to a checkpoint's weights so that population statistics (agreement, class-level
tests) never need to rerun a model. Logits are keyed to the dataset's stable example ids and
carry the dataset fingerprint, so a misaligned comparison is detected, not silently computed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from ..data.augment import to_float
from ..data.datasets import ImageDataset
from ..errors import CheckpointCorruptError, CheckpointFileMissingError, CheckpointMismatchError
from ..provenance import atomic_write_bytes, sha256_file
from .checkpoint import CONFIG_FILE, PREDICTIONS_FILE, Checkpoint
from .devices import describe_device, exact_float32, module_device

__all__ = ["Predictions", "predict", "stored_predictions"]


@dataclass(eq=False)
class Predictions:
    """Logits (N, C) float32 and labels (N,) int64 for the examples ``ids`` of ``dataset``; ``device``: what they
    were computed on (:func:`~hubcompare.models.devices.describe_device`; None when not recorded)."""

    logits: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    dataset: dict  # ImageDataset.describe()
    device: dict | None = None

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(1)

    @property
    def correct(self) -> torch.Tensor:
        return self.predicted == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean())

    def to_bytes(self) -> bytes:
        meta = {"format": "hubcompare-predictions-v1", "ids": json.dumps(self.ids), "dataset": json.dumps(self.dataset)}
        if self.device is not None:
            meta["device"] = json.dumps(self.device)
        return st_save({"logits": self.logits.contiguous(), "labels": self.labels.contiguous()}, metadata=meta)

    def save(self, path: str | Path) -> dict:
        """Write atomically; return the record config.json keeps of it (file, hash, accuracy)."""
        data = self.to_bytes()
        atomic_write_bytes(path, data)
        return {
            "file": Path(path).name,
            "dataset_fingerprint": self.dataset["fingerprint"],
            "num_examples": len(self.ids),
            "accuracy": self.accuracy,
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    @classmethod
    def load(cls, path: str | Path) -> "Predictions":
        path = Path(path)
        if not path.is_file():
            raise CheckpointFileMissingError(f"{path} is missing", path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                logits, labels = f.get_tensor("logits"), f.get_tensor("labels")
            ids, dataset = json.loads(meta["ids"]), json.loads(meta["dataset"])
            device = json.loads(meta["device"]) if "device" in meta else None
        except (SafetensorError, KeyError, ValueError, OSError, RuntimeError) as e:
            raise CheckpointCorruptError(f"{path} is not a valid predictions file ({e}); re-create it with "
                                         "`hubcompare eval --write` on its checkpoint folder.", path) from e
        if logits.ndim != 2 or labels.shape != (logits.shape[0],) or len(ids) != logits.shape[0]:
            raise CheckpointCorruptError(
                f"{path}: logits {tuple(logits.shape)}, labels {tuple(labels.shape)} and {len(ids)} ids disagree; re-create it "
            "with `hubcompare eval --write` on its checkpoint folder.", path
            )
        return cls(logits=logits, labels=labels, ids=ids, dataset=dataset, device=device if isinstance(device, dict) else None)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    dataset: ImageDataset,
    batch_size: int = 500,
    preprocess: Callable[[torch.Tensor], torch.Tensor] = to_float,
    on_batch: Callable[[int, int], None] | None = None,
    device: str | torch.device | None = None,
) -> Predictions:
    """Logits of ``model`` (in eval mode) on every example of ``dataset``, in dataset order.

    ``device``: where to run (the model is moved there; default: where its parameters are). Each batch of
    uint8 images is copied there and preprocessed there; on a GPU in full float32 (TF32 off). The logits
    come back to the CPU, and the result records the device.
    """
    dev = module_device(model) if device is None else torch.device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    chunks = []
    n = len(dataset)
    try:
        with exact_float32():
            for start in range(0, n, batch_size):
                images = dataset.images[start : start + batch_size].to(dev, non_blocking=True)
                chunks.append(model(preprocess(images)).float())
                if on_batch:
                    on_batch(min(start + batch_size, n), n)
    finally:
        model.train(was_training)
    return Predictions(logits=torch.cat(chunks).cpu(), labels=dataset.labels.clone(), ids=list(dataset.ids),
                       dataset=dataset.describe(), device=describe_device(dev))


def stored_predictions(ckpt: Checkpoint) -> Predictions:
    """The predictions stored in a checkpoint folder, checked against config.json (hash, number of classes)."""
    preds = Predictions.load(ckpt.path / PREDICTIONS_FILE)
    expected = (ckpt.meta.predictions or {}).get("sha256")
    if expected and sha256_file(ckpt.path / PREDICTIONS_FILE) != expected:
        raise CheckpointMismatchError(
            f"{ckpt.path / PREDICTIONS_FILE} does not match the sha256 recorded in {CONFIG_FILE}: "
            "it was replaced or modified; regenerate it with `hubcompare eval --write` on its checkpoint folder.",
            ckpt.path / PREDICTIONS_FILE,
        )
    num_classes = ckpt.config.get("num_classes")
    if num_classes is not None and preds.logits.shape[1] != num_classes:
        raise CheckpointMismatchError(
            f"{ckpt.path / PREDICTIONS_FILE} has {preds.logits.shape[1]} classes but {CONFIG_FILE} says {num_classes}",
            ckpt.path / PREDICTIONS_FILE,
        )
    return preds
