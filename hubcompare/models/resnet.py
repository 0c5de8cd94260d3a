"""The CIFAR ResNet v1 family of the paper (depth 6n+2, width multiplier k), registered with timm.

Importing this module registers ``cifar_resnet`` so ``timm.create_model("cifar_resnet",
depth=38, width=4, num_classes=10)`` works, and checkpoint folders load through timm's
``hf-hub:`` / ``local-dir:`` paths. Every layer a comparison can tap has a stable name in
forward order (see :meth:`CifarResNet.forward_taps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from ..errors import InvalidArchitectureError

__all__ = ["CifarResNet", "Tap", "cifar_resnet", "check_architecture", "stage_channels"]

ARCHITECTURE = "cifar_resnet"
BN_MOMENTUM = 0.01  # Keras momentum 0.99 in PyTorch's convention
BN_EPS = 1e-3  # Keras default
EXAMPLE_DEPTHS = (8, 14, 20, 26, 32, 38, 44, 56, 62, 110, 164)
INITS = ("keras", "torch")  # he_normal kernels + zero biases (the authors') | PyTorch's default layer init


def check_architecture(depth: int, width: float) -> int:
    """Validate depth/width and return n, the number of residual blocks per stage."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise InvalidArchitectureError(
            f"depth={depth!r} is not a CIFAR ResNet depth: it must be 6n+2 with n >= 1 "
            f"(e.g. {', '.join(map(str, EXAMPLE_DEPTHS))})."
        )
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise InvalidArchitectureError(
            f"width={width!r} is not a valid width multiplier: it must be a number > 0 "
            "(stage channels are round(16k), round(32k), round(64k); the paper uses 1..10)."
        )
    if round(16 * width) < 1:
        raise InvalidArchitectureError(f"width={width!r} gives 0 channels in stage 1: use width >= 1/32.")
    return (depth - 2) // 6


def stage_channels(width: float) -> tuple[int, int, int]:
    return tuple(int(round(c * width)) for c in (16, 32, 64))  # type: ignore[return-value]


@dataclass(frozen=True)
class Tap:
    """A named layer output. ``stage`` is 0 for the stem, 1-3 for the residual stages, 4 for the head."""

    name: str
    stage: int
    kind: str  # "stem" | "branch" (residual branch before the add) | "out" (after add + ReLU) | "pool" | "logits"


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN residual branch, add, ReLU after the add (ResNet v1)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, bn: dict):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(out_chs, **bn)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(out_chs, **bn)
        # 1x1 projection (with bias, no BN) where the shape changes, as in the authors' Keras code
        self.shortcut = (
            nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=True)
            if stride != 1 or in_chs != out_chs
            else nn.Identity()
        )
        self.act2 = nn.ReLU()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.branch(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet v1 for small images: stem, 3 stages of n BasicBlocks (strides 1, 2, 2), avg-pool, dense."""

    def __init__(
        self,
        depth: int = 20,
        width: float = 1,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        bn_momentum: float = BN_MOMENTUM,
        bn_eps: float = BN_EPS,
        init: str = "keras",
    ):
        super().__init__()
        n = check_architecture(depth, width)
        if global_pool != "avg":
            raise InvalidArchitectureError(f"global_pool={global_pool!r}: only 'avg' is supported.")
        if init not in INITS:
            raise InvalidArchitectureError(f"init={init!r}: choose one of {', '.join(INITS)}.")
        if not (0 < bn_momentum <= 1 and bn_eps > 0):
            raise InvalidArchitectureError(
                f"bn_momentum={bn_momentum!r}, bn_eps={bn_eps!r}: need 0 < bn_momentum <= 1 (PyTorch's convention: "
                "Keras momentum 0.99 is 0.01 here) and bn_eps > 0."
            )
        bn = dict(eps=bn_eps, momentum=bn_momentum)
        self.depth, self.width, self.blocks_per_stage = depth, width, n
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        chs = stage_channels(width)
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(in_chans, chs[0], 3, padding=1, bias=True))
        self.stem.add_module("bn", nn.BatchNorm2d(chs[0], **bn))
        self.stem.add_module("act", nn.ReLU(inplace=True))
        stages, prev = [], chs[0]
        self.feature_info = [dict(num_chs=chs[0], reduction=1, module="stem")]
        for s, c in enumerate(chs):
            stride = 1 if s == 0 else 2
            blocks = [BasicBlock(prev if b == 0 else c, c, stride if b == 0 else 1, bn) for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=c, reduction=2**s, module=f"stages.{s}"))
            prev = c
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = chs[-1]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if init == "keras":  # "torch": the layers' own reset_parameters() already ran
            self._init_weights()
        self.taps = self._build_taps()

    def _init_weights(self) -> None:
        # Keras he_normal on kernels, zero biases (the authors' initialisation)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _build_taps(self) -> tuple[Tap, ...]:
        taps = [Tap("stem", 0, "stem")]
        for s in range(3):
            for b in range(self.blocks_per_stage):
                prefix = f"stage{s + 1}.block{b + 1}"
                taps += [Tap(f"{prefix}.branch", s + 1, "branch"), Tap(f"{prefix}.out", s + 1, "out")]
        taps += [Tap("pool", 4, "pool"), Tap("logits", 4, "logits")]
        return tuple(taps)

    # --- tapping ---------------------------------------------------------------------------
    @property
    def tap_names(self) -> list[str]:
        return [t.name for t in self.taps]

    def stage_boundaries(self, names: Sequence[str] | None = None) -> list[int]:
        """Indices into ``names`` (default: all taps) where a new stage begins (first index excluded)."""
        stage = {t.name: t.stage for t in self.taps}
        names = list(names) if names is not None else self.tap_names
        return [i for i in range(1, len(names)) if stage[names[i]] != stage[names[i - 1]]]

    def forward_taps(
        self,
        x: torch.Tensor,
        names: Iterable[str] | None = None,
        on_tap: Callable[[str, torch.Tensor], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One forward pass returning the requested intermediates (default: all), in forward order.

        Computation stops after the last requested layer. Spatial taps are (B, C, H, W); ``pool`` is
        (B, C) and ``logits`` (B, num_classes). With ``on_tap``, each activation is handed to the
        callback as soon as it is produced and not kept (the dict comes back empty), so a caller can
        reduce it (e.g. to a Gram matrix) without holding every layer of the batch in memory.
        """
        want = self.tap_names if names is None else list(names)
        unknown = [n for n in want if n not in set(self.tap_names)]
        if unknown:
            raise InvalidArchitectureError(
                f"unknown layer name(s) {unknown}; this model's layers are {self.tap_names[0]}, "
                f"{self.tap_names[1]}, ..., {self.tap_names[-1]} (see `hubcompare layers`)."
            )
        wanted, out = set(want), {}
        remaining = len(wanted)

        def keep(name: str, value: torch.Tensor) -> bool:
            nonlocal remaining
            if name in wanted:
                if on_tap is not None:
                    on_tap(name, value)
                else:
                    out[name] = value
                remaining -= 1
            return remaining == 0

        x = self.stem(x)
        if keep("stem", x):
            return self._ordered(out)
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                prefix = f"stage{s + 1}.block{b + 1}"
                branch = block.branch(x)
                if keep(f"{prefix}.branch", branch):
                    return self._ordered(out)
                x = block.act2(branch + block.shortcut(x))
                if keep(f"{prefix}.out", x):
                    return self._ordered(out)
        pooled = self.global_pool(x).flatten(1)
        if keep("pool", pooled):
            return self._ordered(out)
        keep("logits", self.forward_head(pooled, pre_logits=False, pooled=True))
        return self._ordered(out)

    def _ordered(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: out[n] for n in self.tap_names if n in out}

    # --- timm model API --------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, pooled: bool = False) -> torch.Tensor:
        if not pooled:
            x = self.global_pool(x).flatten(1)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    # Inputs are scaled to [0, 1] with no mean/std normalisation (the paper's recipe).
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "first_conv": "stem.conv",
        "classifier": "fc",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"{ARCHITECTURE}.untrained": _cfg()})


@register_model
def cifar_resnet(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet v1, ``depth`` = 6n+2 and width multiplier ``width`` (Nguyen, Raghu & Kornblith 2021)."""
    return build_model_with_cfg(CifarResNet, ARCHITECTURE, pretrained, **kwargs)
