"""How a model sees data: the input shape it takes and the preprocessing that turns dataset images into it.

Models say what they take in their timm ``pretrained_cfg`` (``input_size``, ``mean``, ``std``,
``interpolation``); :func:`model_input_shape` is the one place that falls back when they do not.
:class:`InputSpec` feeds the same uint8 images to models that see data differently (channels,
size, normalisation) and records what each saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputMismatchError

__all__ = ["DEFAULT_IMAGE_SIZE", "InputSpec", "model_input_shape", "unlike_training_data"]

DEFAULT_IMAGE_SIZE = (32, 32)  # CIFAR-sized, for models that record no input size when no data says otherwise
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def model_input_shape(model: nn.Module, data_shape: Sequence[int] | None = None) -> tuple[int, int, int]:
    """(channels, height, width) the model takes: its ``pretrained_cfg["input_size"]`` when set; else
    its ``in_chans`` (or the data's channels, or 3) at the data's size (or ``DEFAULT_IMAGE_SIZE``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("input_size"):
        c, h, w = cfg["input_size"]
        return int(c), int(h), int(w)
    c = getattr(model, "in_chans", None) or (data_shape[0] if data_shape else 3)
    h, w = tuple(data_shape[1:]) if data_shape else DEFAULT_IMAGE_SIZE
    return int(c), int(h), int(w)


@dataclass(frozen=True)
class InputSpec:
    """How one model wants its input: channels, (H, W), per-channel mean/std after scaling to [0, 1]."""

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    @classmethod
    def from_model(cls, model: nn.Module, data_shape: Sequence[int] | None = None) -> InputSpec:
        """From the model's timm ``pretrained_cfg``; what it does not say comes from :func:`model_input_shape`
        (a model without a config takes the data as it is)."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        c, h, w = model_input_shape(model, data_shape)
        mean = tuple(cfg.get("mean", (0.0,) * c))
        std = tuple(cfg.get("std", (1.0,) * c))
        interp = cfg.get("interpolation", "bilinear")
        return cls(c, (h, w), mean, std, interp if interp in INTERPOLATIONS else "bilinear")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one model input."""
        return (self.channels, *self.size)

    def example(self, n: int = 2, device: str | torch.device | None = None) -> torch.Tensor:
        """A batch of ``n`` zero inputs the model accepts (to trace which layers run, and in which order)."""
        return torch.zeros(n, *self.shape, device=device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float model input: [0, 1], channels adapted, resized, normalised (on the images' device)."""
        x = images.to(torch.float32).div_(255.0)
        if x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1 and x.shape[1] == 3:
                x = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                raise InputMismatchError(
                    f"cannot feed {x.shape[1]}-channel images to a model that takes {self.channels} channels: "
                    "compare on a dataset with 1 or 3 channels, or with the model's own channel count."
                )
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode=self.interpolation, align_corners=False if self.interpolation != "nearest" else None,
                              antialias=self.interpolation != "nearest" and x.shape[-1] > self.size[1])
        if any(m != 0 for m in self.mean) or any(s != 1 for s in self.std):
            x = (x - x.new_tensor(self.mean).view(1, -1, 1, 1)) / x.new_tensor(self.std).view(1, -1, 1, 1)
        return x.contiguous()

    def describe(self, source_shape: Sequence[int]) -> dict:
        d = asdict(self)
        d["source_image_shape"] = list(source_shape)
        d["resized"] = tuple(source_shape[-2:]) != self.size
        d["channels_adapted"] = source_shape[0] != self.channels
        return d


def unlike_training_data(ref: str, trained_on: str | None, dataset: str, spec: InputSpec,
                         source_shape: Sequence[int]) -> str | None:
    """The warning for a model fed data unlike its training data: a dataset other than the one its card (config) names,
    or images resized or channel-converted to fit it; one line naming both datasets and what was done to the images.
    None when the model sees its own kind of data as it is (or its card names no dataset and nothing was done)."""
    c, h, w = (int(v) for v in source_shape)
    done = []
    if (h, w) != tuple(spec.size):
        done.append(f"resized {h}x{w} -> {spec.size[0]}x{spec.size[1]}")
    if c != spec.channels:
        done.append("made grey (3 channels -> 1)" if spec.channels == 1 and c == 3 else
                    f"grey repeated to {spec.channels} channels" if c == 1 else f"{c} channels -> {spec.channels}")
    other = trained_on is not None and trained_on != dataset
    if not other and not done:
        return None
    trained = f"trained on {trained_on}" if trained_on else "its card names no training dataset"
    what = " and ".join(done) if done else f"fed as they are ({c}x{h}x{w})"
    return (f"{ref}: {trained}, compared on {dataset}: its images were {what}, so it sees data unlike its training data "
            "(its CKA describes it on that data).")
