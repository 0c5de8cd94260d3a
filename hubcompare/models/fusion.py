"""Convolution + BatchNorm (+ ReLU) fused for inference while a block runs, and the model put back after.

An eval-mode BatchNorm after a convolution is an affine map per channel, so it folds into the convolution's
weights and bias (``w * g / sqrt(v + eps)``, ``(b - m) * g / sqrt(v + eps) + beta``): one pass over each
activation instead of two. On the CPU a ReLU that is the BatchNorm's only consumer (past identity placeholders
no one taps) runs inside the same oneDNN convolution as well. It is the same arithmetic up to float32 rounding
(CKA moves by ~1e-8, far inside the 1e-6 bound), so it serves similarity measurement, never accuracy.

Which convolutions feed which BatchNorm comes from a ``torch.fx`` trace of ``forward``: a pair is fused only
when the convolution's output goes to that BatchNorm alone and every module involved is called once; a model
``torch.fx`` cannot trace runs as it is. The folded weights are made per call (one layer's worth at a time), so
the model's memory does not grow, and the model's own modules and weights are never modified: the fused modules
stand in for them inside the block only. Layers a caller taps by module name (``keep``) are never hidden.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Collection, Iterator

import torch
import torch.fx
from torch import nn

__all__ = ["FusedConvBN", "fused_inference"]

_POINTWISE: list[bool] = []  # whether oneDNN's fused convolution + ReLU works here (checked once)


def _pointwise_conv() -> bool:
    """Whether ``mkldnn._convolution_pointwise`` (the fused convolution torch's compiler emits for CPUs) is here."""
    if not _POINTWISE:
        ok = False
        op = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
        if op is not None and torch.backends.mkldnn.is_available():
            x = torch.linspace(-1, 1, 2 * 3 * 5 * 5).reshape(2, 3, 5, 5)
            w, b = torch.linspace(-1, 1, 4 * 27).reshape(4, 3, 3, 3), torch.ones(4)
            try:
                got = op(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [None], "")
                ok = bool(torch.allclose(got, torch.relu(nn.functional.conv2d(x, w, b, padding=1)), atol=1e-5))
            except (RuntimeError, TypeError, NotImplementedError):
                ok = False
        _POINTWISE.append(ok)
    return _POINTWISE[0]


class FusedConvBN(nn.Module):
    """``relu?(bn(conv(x)))`` for an eval-mode BatchNorm, computed as one convolution with folded weights."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool):
        super().__init__()
        self._parts = (conv, bn)  # a plain tuple, not submodules: the module names a capture sees stay the model's own
        self.relu = relu

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        conv, bn = self._parts
        scale = torch.rsqrt(bn.running_var + bn.eps)
        shift = -bn.running_mean * scale
        if bn.affine:
            scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
        weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self._parts[0]
        weight, bias = self.folded()
        if (self.relu and x.device.type == "cpu" and x.dtype == torch.float32 and conv.padding_mode == "zeros"
                and not isinstance(conv.padding, str) and _pointwise_conv()):
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(conv.padding), list(conv.stride),
                                                          list(conv.dilation), conv.groups, "relu", [None], "")
        y = conv._conv_forward(x, weight, bias)
        return torch.relu_(y) if self.relu else y


def _pairs(model: nn.Module, keep: Collection[str]) -> tuple[list[tuple[str, str, str | None]], str | None]:
    """(conv, bn, relu or None) module names to fuse, from a torch.fx trace; or no pairs and why."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001 - any model torch.fx cannot trace simply runs unfused
        return [], f"not traceable by torch.fx ({type(e).__name__})"
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def sole_user(node):
        users = list(node.users)
        return users[0] if len(users) == 1 and users[0].op == "call_module" and calls[users[0].target] == 1 else None

    found = []
    for node in graph.nodes:
        conv = modules.get(node.target) if node.op == "call_module" else None
        if type(conv) is not nn.Conv2d or calls[node.target] != 1 or node.target in keep:
            continue
        bn_node = sole_user(node)
        bn = modules[bn_node.target] if bn_node is not None else None
        if (not isinstance(bn, nn.BatchNorm2d) or bn.training or bn.running_mean is None or bn_node.args != (node,)
                or bn_node.kwargs or bn.num_features != conv.out_channels):
            continue
        relu_node, last = (None if bn_node.target in keep else sole_user(bn_node)), bn_node
        while relu_node is not None and type(modules[relu_node.target]) is nn.Identity and relu_node.target not in keep:
            relu_node, last = sole_user(relu_node), relu_node  # e.g. timm's drop_block placeholder between bn1 and act1
        relu = relu_node is not None and type(modules[relu_node.target]) is nn.ReLU and relu_node.args == (last,)
        found.append((node.target, bn_node.target, relu_node.target if relu else None))
    return found, None


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@contextmanager
def fused_inference(model: nn.Module, keep: Collection[str] = ()) -> Iterator[dict]:
    """``model`` (in eval mode) with its conv + BatchNorm (+ ReLU) chains fused inside the block; the block gets a
    record of what was fused (for provenance). ``keep``: module names a caller hooks, never replaced or hidden."""
    pairs, why = ([], "model in training mode") if model.training else _pairs(model, set(keep))
    swapped: list[tuple[str, nn.Module]] = []
    try:
        for conv, bn, relu in pairs:
            parts = [(conv, FusedConvBN(model.get_submodule(conv), model.get_submodule(bn), relu is not None)),
                     (bn, nn.Identity())] + ([(relu, nn.Identity())] if relu else [])
            for name, new in parts:
                swapped.append((name, model.get_submodule(name)))
                _set(model, name, new)
        record = {"batchnorm_folded": len(pairs), "relu_fused": sum(r is not None for _, _, r in pairs)}
        yield record | ({"not_fused": why} if why else {})
    finally:
        for name, original in reversed(swapped):
            _set(model, name, original)
