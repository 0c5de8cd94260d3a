"""Block deletion (the paper's Figure 5): residual blocks deleted from the end of each stage backwards,
keeping the identity path, no retraining; the test accuracy after each deletion.

A deleted block's output is its own final activation applied to its input (``act(0 + x)``): the
residual branch is gone and the identity shortcut stays. Only blocks whose shortcut is the identity can
go (never one with a projection: its shortcut is a learned layer, not a path that can be kept), so a
stage's deletions stop at its first projection block. Deleting nothing runs exactly what the model
runs, so its accuracy is the model's own.

Residual stages are found for hubcompare's CIFAR ResNets and for timm ResNets (``BasicBlock`` /
``Bottleneck`` stages); any other model gets a :class:`~hubcompare.errors.NoDeletableBlocksError`
saying why.
"""

from __future__ import annotations

import csv
import io
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from timm.models.resnet import BasicBlock as TimmBasicBlock
from timm.models.resnet import Bottleneck as TimmBottleneck
from torch import nn

from ..data.datasets import ImageDataset
from ..errors import NoDeletableBlocksError, ProbeError
from ..models.devices import describe_device, exact_float32, on_device, resolve_device
from ..models.inputs import InputSpec
from ..models.resnet import BasicBlock as CifarBasicBlock
from ..models.resnet import CifarResNet
from ..provenance import package_versions
from ..similarity.engine import CompareModel

__all__ = ["rows_to_csv", "ResidualBlock", "ResidualStage", "DeletionResult", "residual_stages", "blocks_deleted", "model_accuracy",
           "delete_blocks", "check_head"]

# residual block type -> (its shortcut attribute, what an identity shortcut is there, its final activation)
_KINDS: dict[type, tuple[str, Callable[[object], bool], str]] = {
    CifarBasicBlock: ("shortcut", lambda s: isinstance(s, nn.Identity), "act2"),
    TimmBasicBlock: ("downsample", lambda s: s is None or isinstance(s, nn.Identity), "act2"),
    TimmBottleneck: ("downsample", lambda s: s is None or isinstance(s, nn.Identity), "act3"),
}


@dataclass(frozen=True)
class ResidualBlock:
    stage: int  # 1-based, in forward order
    index: int  # 1-based within its stage
    module: str  # its name in ``model.named_modules()``
    layer: str  # the layer name its output has in layer lists (a CIFAR ResNet's ``stageS.blockB.out`` tap, else the module)
    deletable: bool
    reason: str = ""  # why it cannot be deleted


@dataclass(frozen=True)
class ResidualStage:
    index: int
    module: str
    blocks: tuple[ResidualBlock, ...]

    @property
    def deletable_tail(self) -> list[ResidualBlock]:
        """The blocks that can be deleted from the stage's end backwards (up to its last projection block)."""
        tail: list[ResidualBlock] = []
        for b in reversed(self.blocks):
            if not b.deletable:
                break
            tail.insert(0, b)
        return tail


class _IdentityPath(nn.Module):
    """A deleted block: its final activation on the identity path, ``act(x)``, with no residual branch."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x.clone())  # never in place on the previous block's output


def residual_stages(model: nn.Module) -> list[ResidualStage]:
    """The model's stages of residual blocks in forward order, each block marked deletable or not (and why).

    Raises :class:`NoDeletableBlocksError` when the model has no such stage, or no block with an identity shortcut."""
    found: list[tuple[str, nn.Sequential]] = []
    for name, module in model.named_modules():
        kids = list(module.children()) if isinstance(module, nn.Sequential) else []
        if kids and all(type(k) in _KINDS for k in kids):
            found.append((name, module))
    if not found:
        raise NoDeletableBlocksError(
            f"{type(model).__name__} has no stage of residual blocks to delete from: block deletion knows hubcompare's "
            "CIFAR ResNets and timm ResNets (stages of BasicBlock/Bottleneck); other architectures have no block whose "
            "branch can be dropped keeping an identity path.")
    native = isinstance(model, CifarResNet)
    stages = []
    for s, (name, seq) in enumerate(found, 1):
        blocks = []
        for b, block in enumerate(seq, 1):
            attr, is_identity, _ = _KINDS[type(block)]
            ok = is_identity(getattr(block, attr))
            module = f"{name}.{b - 1}" if name else str(b - 1)
            blocks.append(ResidualBlock(s, b, module, f"stage{s}.block{b}.out" if native else module, ok,
                                        "" if ok else f"its shortcut is a projection ({attr}), not the identity"))
        stages.append(ResidualStage(s, name, tuple(blocks)))
    if not any(st.deletable_tail for st in stages):
        raise NoDeletableBlocksError(
            f"{type(model).__name__}: every stage ends in a block with a projection shortcut, so no block can be deleted "
            "keeping the identity path (a stage needs blocks after its first, downsampling one).")
    return stages


@contextmanager
def blocks_deleted(model: nn.Module, blocks: Sequence[ResidualBlock]) -> Iterator[nn.Module]:
    """``model`` with ``blocks`` replaced by their identity paths inside the context, restored after."""
    modules = dict(model.named_modules())
    saved = []
    try:
        for b in blocks:
            if not b.deletable:
                raise ProbeError(f"block {b.module} cannot be deleted: {b.reason}")
            parent_name, _, child = b.module.rpartition(".")
            parent = modules[parent_name] if parent_name else model
            block = parent[int(child)]
            saved.append((parent, int(child), block))
            parent[int(child)] = _IdentityPath(getattr(block, _KINDS[type(block)][2]))
        yield model
    finally:
        for parent, i, block in reversed(saved):
            parent[i] = block


def check_head(model: CompareModel, dataset: ImageDataset, what: str) -> None:
    """Refuse a model whose head does not classify ``dataset``'s classes (its accuracy there means nothing)."""
    num_classes = getattr(model.model, "num_classes", None)
    if num_classes != dataset.num_classes:
        raise ProbeError(
            f"{model.ref} has a {num_classes}-class head but {dataset.name} has {dataset.num_classes} classes: {what} "
            "needs the model's own predictions, so give the dataset its head was trained on.", params=("dataset",))


@torch.no_grad()
def model_accuracy(model: nn.Module, dataset: ImageDataset, batch_size: int = 500, num_examples: int | None = None,
                   device: str | torch.device = "cpu") -> float:
    """Test accuracy of ``model`` (eval mode, float32 exact) on the first ``num_examples`` of ``dataset``."""
    dev = resolve_device(device)
    n = len(dataset) if num_examples is None else min(num_examples, len(dataset))
    spec = InputSpec.from_model(model, dataset.image_shape)
    correct = 0
    was_training = model.training
    model.eval()
    try:
        with exact_float32(), on_device([model], dev):
            for lo in range(0, n, batch_size):
                logits = model(spec(dataset.images[lo : min(n, lo + batch_size)].to(dev)))
                logits = logits[0] if isinstance(logits, (tuple, list)) else logits
                correct += int((logits.argmax(1).cpu() == dataset.labels[lo : min(n, lo + batch_size)]).sum())
    finally:
        model.train(was_training)
    return correct / n


def rows_to_csv(rows: list[dict]) -> str:
    """Rows of one result (dicts with the same keys) as CSV text, a header line first."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


@dataclass
class DeletionResult:
    """Test accuracy after deleting 0, 1, 2, ... blocks from the end of each stage (the other stages intact)."""

    ref: str
    full_accuracy: float
    stages: list[dict]  # per stage: its blocks, and steps [{deleted, blocks, accuracy, drop}]
    provenance: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    blocks: list[dict] = field(default_factory=list)  # detected blocks ({"layers": [...], ...}) for shading, if given

    @property
    def residual_blocks(self) -> list[dict]:
        """Every residual block in forward order (dicts of :class:`ResidualBlock`)."""
        return [b for st in self.stages for b in st["blocks"]]

    def rows(self) -> list[dict]:
        """One row per deletion (the CSV): stage, blocks deleted, the first deleted block's layer, accuracy, drop."""
        return [{"stage": st["stage"], "deleted": s["deleted"], "first_deleted": s["blocks"][0] if s["blocks"] else "",
                 "accuracy": s["accuracy"], "drop": s["drop"]} for st in self.stages for s in st["steps"]]

    def to_csv(self) -> str:
        return rows_to_csv(self.rows())

    def to_json(self) -> dict:
        return {"kind": "block-deletion", "ref": self.ref, "model": self.provenance, "full_accuracy": self.full_accuracy,
                "stages": self.stages, "detected_blocks": self.blocks, "settings": self.settings}


def delete_blocks(model: CompareModel, dataset: ImageDataset, batch_size: int = 500, num_examples: int | None = None,
                  on_step: Callable[[int, int], None] | None = None, device: str | torch.device = "cpu") -> DeletionResult:
    """Delete residual blocks one by one from the end of each stage backwards (identity path kept, no retraining)
    and measure ``dataset``'s accuracy after each; ``on_step(done, total)`` after each evaluation."""
    if batch_size < 1:
        raise ProbeError(f"batch_size must be >= 1, got {batch_size}", params=("batch_size",))
    if num_examples is not None and num_examples < 1:
        raise ProbeError(f"num_examples must be >= 1, got {num_examples}", params=("num_examples",))
    check_head(model, dataset, "block deletion")
    stages = residual_stages(model.model)
    dev = resolve_device(device)
    total = 1 + sum(len(st.deletable_tail) for st in stages)
    started = time.perf_counter()
    full = model_accuracy(model.model, dataset, batch_size, num_examples, dev)
    done = 1
    if on_step:
        on_step(done, total)
    out = []
    for st in stages:
        tail = st.deletable_tail
        steps = [{"deleted": 0, "blocks": [], "accuracy": full, "drop": 0.0}]
        for k in range(1, len(tail) + 1):
            gone = tail[len(tail) - k:]
            with blocks_deleted(model.model, gone):
                acc = model_accuracy(model.model, dataset, batch_size, num_examples, dev)
            steps.append({"deleted": k, "blocks": [b.layer for b in gone], "accuracy": acc, "drop": full - acc})
            done += 1
            if on_step:
                on_step(done, total)
        out.append({"stage": st.index, "module": st.module, "deletable": len(tail),
                    "blocks": [asdict(b) for b in st.blocks], "steps": steps})
    n = len(dataset) if num_examples is None else min(num_examples, len(dataset))
    settings = {
        "dataset": dataset.describe(), "num_examples": n, "batch_size": batch_size, "device": describe_device(dev),
        "method": "each stage's last k blocks deleted (k = 1, 2, ... up to its first projection block), other stages "
                  "intact; a deleted block outputs act(x), its final activation on the identity path; no retraining; "
                  "BN in inference mode, float32 (TF32 off)",
        "inputs": InputSpec.from_model(model.model, dataset.image_shape).describe(dataset.image_shape),
        "seconds": round(time.perf_counter() - started, 2), "package_versions": package_versions(),
    }
    return DeletionResult(model.ref, full, out, model.provenance, settings)
