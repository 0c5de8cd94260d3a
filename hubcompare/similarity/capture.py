"""Layer capture for any model, streaming: each activation goes to a sink as soon as it exists.

- hubcompare's CIFAR ResNets expose named taps (``forward_taps``) in forward order.
- timm models: by default the modules their ``feature_info`` names (stem and each stage), plus
  the output; any ``named_modules()`` name can be picked with glob patterns (forward hooks).
- any other ``nn.Module``: module-name glob patterns (forward hooks).

Each model's input preprocessing (:class:`~hubcompare.models.InputSpec`) lives with the models:
capture only runs the model on what it is given.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import LayerSelectionError
from ..models.devices import module_device
from ..models.inputs import InputSpec

__all__ = ["LayerInfo", "LayerCapture"]

Sink = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class LayerInfo:
    name: str
    stage: int | None = None
    kind: str = "module"


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
        name: str | None = None,
    ):
        """``example``: a small input batch the model accepts; hook-based capture runs it once to put
        the selected layers in forward order (default: zeros shaped by the model's pretrained_cfg).
        ``name``: what errors call the model (its reference; default: its class)."""
        self.model = model.eval()
        self.native = hasattr(model, "forward_taps") and hasattr(model, "taps")
        available = self.available(model)
        if patterns:
            chosen = [l for l in available if any(fnmatch.fnmatchcase(l.name, p) for p in patterns)]
            unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(l.name, p) for l in available)]
            if unmatched:
                sample = ", ".join(l.name for l in available[:6])
                raise LayerSelectionError(
                    f"layer pattern(s) {unmatched} match no layer of {name or 'the ' + type(model).__name__ + ' model'}; "
                    f"its layers look like {sample}, ... (globs like '*.out' work).",
                    params=("layers",),
                )
        else:
            chosen = self.default_layers(model, available)
        chosen = [l for l in chosen if l.name not in set(exclude)]
        if not chosen:
            raise LayerSelectionError("no layers left to compare after exclusions: choose other layer patterns",
                                      params=("layers",))
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
        x = example if example is not None else InputSpec.from_model(self.model).example(device=module_device(self.model))
        names = [l.name for l in chosen]
        with torch.no_grad():
            self._run_hooks(x, names, lambda i, a: order.append(names[i]), stop_early=False)
        missing = [n for n in names if n not in order]
        if missing:
            raise LayerSelectionError(f"layer(s) {missing} produce no tensor output in a forward pass and cannot be "
                                      "compared: leave them out of the layer patterns", params=("layers",))
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
