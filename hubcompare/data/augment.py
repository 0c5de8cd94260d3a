"""Batched augmentation on in-memory tensors: one pad, one gather and one flip per batch.

Per-sample PIL transforms cost more than a small ResNet's step on 2 cores; doing the same
pad-crop-flip as tensor ops on the whole batch keeps the input pipeline off the critical path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["to_float", "pad_crop_flip"]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1] (the paper's input scaling; no mean/std)."""
    return images.to(torch.float32).div_(255.0)


def pad_crop_flip(
    x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator, pad_mode: str = "reflect",
    offsets: str = "example",
) -> torch.Tensor:
    """Pad each side by ``pad``, crop back to the input size at a random offset, flip half (batched).

    ``x`` is float (B, C, H, W). ``offsets="example"`` draws a crop offset per image (the usual
    augmentation); ``"batch"`` shifts the whole batch by one offset (what a simple hand-written
    loop does, and what made block structure common in deep digits ResNets: README.md, "Block
    detection"). Randomness comes only from ``generator``, so a seeded run is
    reproducible. ``x`` may live on any device: the offsets and flips are drawn on the CPU (from the
    CPU ``generator``, so a run draws the same ones on every device) and the gathers run where ``x`` is.
    """
    b, c, h, w = x.shape
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad), mode=pad_mode)
        k = b if offsets == "example" else 1
        oy = torch.randint(0, 2 * pad + 1, (k,), generator=generator).to(x.device, non_blocking=True).expand(b)
        ox = torch.randint(0, 2 * pad + 1, (k,), generator=generator).to(x.device, non_blocking=True).expand(b)
        rows = (oy[:, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
        x = x.gather(2, rows)
        cols = (ox[:, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
        x = x.gather(3, cols)
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(x.device, non_blocking=True)
        x = torch.where(mask.view(b, 1, 1, 1), x.flip(3), x)
    return x
