"""Layer capture for any model, streaming: each activation goes to a sink as soon as it exists.

- hubcompare's CIFAR ResNets expose named taps (``forward_taps``) in forward order.
- timm models: by default the modules their ``feature_info`` names (stem and each stage), plus
  the output; any ``named_modules()`` name can be picked with glob patterns (forward hooks).
- any other ``nn.Module``: module-name glob patterns (forward hooks).

Each model also gets its own input preprocessing (:class:`InputSpec`: channels, size, mean/std
from its pretrained config), so models that see data differently are fed the same examples the
way each expects, and the result records what each saw.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HubcompareError

__all__ = ["LayerInfo", "LayerCapture", "InputSpec", "LayerSelectionError"]

Sink = Callable[[int, torch.Tensor], None]


class LayerSelectionError(HubcompareError, ValueError):
    """Layer patterns that match nothing, or a layer that cannot be captured."""


@dataclass(frozen=True)
class LayerInfo:
    name: str
    stage: int | None = None
    kind: str = "module"


@dataclass(frozen=True)
class InputSpec:
    """How one model wants its input: channels, (H, W), per-channel mean/std after scaling to [0, 1]."""

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    @classmethod
    def from_model(cls, model: nn.Module, data_shape: Sequence[int]) -> "InputSpec":
        """From the model's timm ``pretrained_cfg``; a model without one takes the data as it is."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        c, h, w = cfg.get("input_size", (getattr(model, "in_chans", data_shape[0]), *data_shape[1:]))
        mean = tuple(cfg.get("mean", (0.0,) * c))
        std = tuple(cfg.get("std", (1.0,) * c))
        interp = cfg.get("interpolation", "bilinear")
        return cls(int(c), (int(h), int(w)), mean, std, interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float model input: [0, 1], channels adapted, resized, normalised."""
        x = images.to(torch.float32).div_(255.0)
        if x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1 and x.shape[1] == 3:
                x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                raise HubcompareError(f"cannot feed {x.shape[1]}-channel images to a model that takes {self.channels} channels")
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode=self.interpolation, align_corners=False if self.interpolation != "nearest" else None,
                              antialias=self.interpolation != "nearest" and x.shape[-1] > self.size[1])
        if any(m != 0 for m in self.mean) or any(s != 1 for s in self.std):
            x = (x - torch.tensor(self.mean).view(1, -1, 1, 1)) / torch.tensor(self.std).view(1, -1, 1, 1)
        return x.contiguous()

    def describe(self, source_shape: Sequence[int]) -> dict:
        d = asdict(self)
        d["source_image_shape"] = list(source_shape)
        d["resized"] = tuple(source_shape[-2:]) != self.size
        d["channels_adapted"] = source_shape[0] != self.channels
        return d


class _StopForward(Exception):
    """Raised by the last hook so the rest of the network (e.g. the head) is not computed."""


class LayerCapture:
    """Runs ``model`` on a batch and passes each selected layer's activation to ``sink(index, act)``."""

    def __init__(
        self,
        model: nn.Module,
        patterns: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        example: torch.Tensor | None = None,
    ):
        """``example``: a small input batch the model accepts; hook-based capture runs it once to put
        the selected layers in forward order (default: zeros shaped by the model's pretrained_cfg)."""
        self.model = model.eval()
        self.native = hasattr(model, "forward_taps") and hasattr(model, "taps")
        available = self.available(model)
        if patterns:
            chosen = [l for l in available if any(fnmatch.fnmatchcase(l.name, p) for p in patterns)]
            unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(l.name, p) for l in available)]
            if unmatched:
                sample = ", ".join(l.name for l in available[:6])
                raise LayerSelectionError(
                    f"layer pattern(s) {unmatched} match no layer of {type(model).__name__}; its layers look like "
                    f"{sample}, ... (run `hubcompare layers REF` for the full list; globs like '*.out' work)."
                )
        else:
            chosen = self.default_layers(model, available)
        chosen = [l for l in chosen if l.name not in set(exclude)]
        if not chosen:
            raise LayerSelectionError("no layers left to compare after exclusions")
        self.layers = chosen
        if not self.native:
            self.layers = self._forward_order(chosen, example)

    # --- which layers exist -------------------------------------------------------------------
    @staticmethod
    def available(model: nn.Module) -> list[LayerInfo]:
        if hasattr(model, "forward_taps") and hasattr(model, "taps"):
            return [LayerInfo(t.name, t.stage, t.kind) for t in model.taps]
        stage_of = {}
        for i, info in enumerate(getattr(model, "feature_info", None) or []):
            if isinstance(info, dict) and "module" in info:
                stage_of[info["module"]] = i
        layers = [LayerInfo(n, stage_of.get(n), "feature" if n in stage_of else "module") for n, _ in model.named_modules() if n]
        return layers + [LayerInfo("output", None, "logits")]

    @staticmethod
    def default_layers(model: nn.Module, available: list[LayerInfo]) -> list[LayerInfo]:
        """ResNets: every tap. timm: feature_info modules + output. Others: top-level children + output."""
        if hasattr(model, "forward_taps") and hasattr(model, "taps"):
            return available
        features = [l for l in available if l.kind == "feature"]
        if features:
            return features + [available[-1]]
        top = {n for n, _ in model.named_children()}
        return [l for l in available if l.name in top] + [available[-1]]

    def _forward_order(self, chosen: list[LayerInfo], example: torch.Tensor | None) -> list[LayerInfo]:
        order: list[str] = []
        if example is None:
            cfg = getattr(self.model, "pretrained_cfg", None) or {}
            example = torch.zeros(2, *cfg.get("input_size", (getattr(self.model, "in_chans", 3), 32, 32)))
        x = example
        names = [l.name for l in chosen]
        with torch.no_grad():
            self._run_hooks(x, names, lambda i, a: order.append(names[i]), stop_early=False)
        missing = [n for n in names if n not in order]
        if missing:
            raise LayerSelectionError(f"layer(s) {missing} produce no tensor output in a forward pass and cannot be compared")
        by_name = {l.name: l for l in chosen}
        return [by_name[n] for n in dict.fromkeys(order)]

    # --- running ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]

    def stage_boundaries(self) -> list[int]:
        """Indices where the stage changes (only where stages are known)."""
        st = [l.stage for l in self.layers]
        return [i for i in range(1, len(st)) if st[i] is not None and st[i - 1] is not None and st[i] != st[i - 1]]

    @torch.no_grad()
    def run(self, x: torch.Tensor, sink: Sink) -> None:
        names = self.names
        if self.native:
            index = {n: i for i, n in enumerate(names)}
            self.model.forward_taps(x, names, on_tap=lambda n, a: sink(index[n], a))
        else:
            self._run_hooks(x, names, sink, stop_early=True)

    def _run_hooks(self, x: torch.Tensor, names: list[str], sink: Sink, stop_early: bool) -> None:
        modules = dict(self.model.named_modules())
        seen: set[int] = set()
        wanted_modules = [n for n in names if n != "output"]
        handles = []

        def make_hook(i: int):
            def hook(module, inputs, output):
                if i in seen:
                    return  # a module called twice: its first call is the layer
                seen.add(i)
                out = output[0] if isinstance(output, (tuple, list)) else output
                if isinstance(out, torch.Tensor):
                    sink(i, out)
                if stop_early and "output" not in names and len(seen) == len(wanted_modules):
                    raise _StopForward

            return hook

        try:
            for i, n in enumerate(names):
                if n != "output":
                    handles.append(modules[n].register_forward_hook(make_hook(i)))
            try:
                out = self.model(x)
                if "output" in names:
                    sink(names.index("output"), out[0] if isinstance(out, (tuple, list)) else out)
            except _StopForward:
                pass
        finally:
            for h in handles:
                h.remove()
