"""What a config.json may ask to be built, checked before anything is built or allocated.

A pulled repo's config decides the architecture and its arguments, so :func:`plan_build` checks them
first: the architecture is a plain name registered with timm (never ``hf-hub:``/``local-dir:``, which
would make timm fetch another repo's config unpinned), ``model_args`` are keyword arguments the
architecture takes with values of the right type and range, and the model's size is estimated
without allocating it (analytically for ``cifar_resnet``, on PyTorch's ``meta`` device for other timm
architectures) and compared with ``max_params``.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from timm.models import PretrainedCfg

from ..errors import HubcompareError, ModelConfigError, ModelTooLargeError, short_repr
from . import resnet as _resnet
from .checkpoint import DEFAULT_MAX_PARAMS, MAX_CLASSES, MAX_INPUT_SIDE, check_config, is_int

__all__ = ["BuildPlan", "plan_build", "estimate_size", "cifar_resnet_size", "check_size", "MAX_CIFAR_DEPTH"]

MAX_CIFAR_DEPTH = 1202  # He et al.'s ResNet-1202, the deepest CIFAR ResNet published (19.5M parameters at width 1)
MAX_IN_CHANS = 1024
# pretrained_cfg keys that say where weights come from: never passed on (nothing is downloaded when building)
_SOURCE_KEYS = {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "custom_load"}
_CFG_FIELDS = {f.name for f in fields(PretrainedCfg)} - _SOURCE_KEYS


def _is_number(v: Any, low: float, high: float, high_open: bool = False) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v
            and (v < high if high_open else v <= high))


_Check = tuple[Callable[[Any], bool], str]
_RATE: _Check = (lambda v: _is_number(v, 0, 1, high_open=True), "a number in [0, 1)")
_IN_CHANS: _Check = (lambda v: is_int(v, 1, MAX_IN_CHANS), f"an integer from 1 to {MAX_IN_CHANS}")
_NUM_CLASSES: _Check = (lambda v: is_int(v, 0, MAX_CLASSES), f"an integer from 0 to {MAX_CLASSES:,}")

# cifar_resnet: CifarResNet's keyword arguments (depth and width are checked by resnet.check_architecture too)
CIFAR_ARGS: dict[str, _Check] = {
    "depth": (lambda v: is_int(v, 8, MAX_CIFAR_DEPTH) and (v - 2) % 6 == 0,
              f"an integer 6n+2 from 8 to {MAX_CIFAR_DEPTH} (e.g. {', '.join(map(str, _resnet.EXAMPLE_DEPTHS))})"),
    "width": (lambda v: _is_number(v, 1 / 32, math.inf, high_open=True), "a finite number >= 1/32"),
    "num_classes": _NUM_CLASSES,
    "in_chans": _IN_CHANS,
    "drop_rate": _RATE,
    "global_pool": (lambda v: v == "avg", "'avg'"),
    "bn_momentum": (lambda v: _is_number(v, 0, 1) and v > 0, "a number in (0, 1]"),
    "bn_eps": (lambda v: _is_number(v, 0, 1) and v > 0, "a number in (0, 1]"),
    "init": (lambda v: v in _resnet.INITS, " or ".join(map(repr, _resnet.INITS))),
}
# Other timm architectures: only arguments that do not change how many layers are built (structural
# arguments such as depth or layers could make even an estimate on the meta device take minutes).
TIMM_ARGS: dict[str, _Check] = {
    "num_classes": _NUM_CLASSES,
    "in_chans": _IN_CHANS,
    "drop_rate": _RATE,
    "drop_path_rate": _RATE,
    "drop_block_rate": _RATE,
    "global_pool": (lambda v: isinstance(v, str) and re.fullmatch(r"[a-z_]{0,16}", v) is not None,
                    "a pooling name such as 'avg', 'max', 'token' or ''"),
    "img_size": (lambda v: is_int(v, 1, MAX_INPUT_SIDE) or (isinstance(v, list) and len(v) == 2
                                                           and all(is_int(s, 1, MAX_INPUT_SIDE) for s in v)),
                 f"an integer or [height, width] from 1 to {MAX_INPUT_SIDE}"),
}


@dataclass(frozen=True)
class BuildPlan:
    """A checked config: what ``timm.create_model`` is called with, and the size it will have."""

    architecture: str
    kwargs: dict  # model_args with in_chans and num_classes
    overlay: dict  # pretrained_cfg_overlay: the config's pretrained_cfg without its weight sources
    params: int
    buffers: int


def plan_build(config: dict, cfg_path: str | Path, max_params: int = DEFAULT_MAX_PARAMS) -> BuildPlan:
    """Check config.json's architecture and arguments, estimate the model's size without allocating it,
    and refuse it (:class:`~hubcompare.errors.ModelConfigError`, :class:`~hubcompare.errors.ModelTooLargeError`)
    before anything is built."""
    cfg_path = Path(cfg_path)
    check_config(config, cfg_path)
    arch = config["architecture"]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(str(arch), timm.list_models(), n=1)
        raise ModelConfigError(f"{cfg_path}: 'architecture' {arch!r} is not an architecture timm {timm.__version__} "
                               f"knows{f' (did you mean {close[0]}?)' if close else ''}", cfg_path)
    model_args = dict(config.get("model_args") or {})
    cfg = dict(config.get("pretrained_cfg") or {})
    overlay = {k: v for k, v in cfg.items() if k in _CFG_FIELDS}
    kwargs = dict(model_args)
    kwargs.setdefault("in_chans", (cfg.get("input_size") or [3])[0])
    kwargs["num_classes"] = config.get("num_classes", model_args.get("num_classes", 1000))
    is_cifar = arch.split(".")[0] == _resnet.ARCHITECTURE
    allowed = CIFAR_ARGS if is_cifar else TIMM_ARGS
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ModelConfigError(
            f"{cfg_path}: 'model_args' has {', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''}, "
            f"which hubcompare does not pass to {arch}; it accepts {', '.join(sorted(allowed))}", cfg_path)
    for key, value in kwargs.items():
        ok, what = allowed[key]
        if not ok(value):
            raise ModelConfigError(f"{cfg_path}: model_args {key!r} of {arch} must be {what}, not {short_repr(value)}", cfg_path)
    where = f"{cfg_path}: {arch}({', '.join(f'{k}={v!r}' for k, v in sorted(model_args.items()))})"
    if is_cifar:
        try:
            _resnet.check_architecture(kwargs.get("depth", 20), kwargs.get("width", 1))
        except HubcompareError as e:
            raise ModelConfigError(f"{cfg_path}: {e}", cfg_path) from e
        params, buffers = cifar_resnet_size(kwargs.get("depth", 20), kwargs.get("width", 1), kwargs["num_classes"],
                                            kwargs["in_chans"])
    else:
        params, buffers = estimate_size(arch, kwargs, overlay, where=where, path=cfg_path)
    check_size(params, buffers, max_params, where, cfg_path)
    return BuildPlan(arch, kwargs, overlay, params, buffers)


def cifar_resnet_size(depth: int, width: float, num_classes: int = 10, in_chans: int = 3) -> tuple[int, int]:
    """(parameters, buffer elements) of ``cifar_resnet`` at this depth and width, counted without building it."""
    n = (depth - 2) // 6
    chs = _resnet.stage_channels(width)

    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + cout  # every conv has a bias

    params = conv(in_chans, chs[0], 3) + 2 * chs[0]  # stem conv + BN affine
    bn_layers, bn_chans, prev = 1, chs[0], chs[0]
    for s, c in enumerate(chs):
        for b in range(n):
            cin = prev if b == 0 else c
            params += conv(cin, c, 3) + conv(c, c, 3) + 4 * c
            if b == 0 and (s > 0 or cin != c):
                params += conv(cin, c, 1)
        bn_layers += 2 * n
        bn_chans += 2 * n * c
        prev = c
    if num_classes > 0:
        params += chs[-1] * num_classes + num_classes
    return params, 2 * bn_chans + bn_layers  # running mean and var, plus num_batches_tracked per BN


def estimate_size(architecture: str, kwargs: dict | None = None, overlay: dict | None = None, *,
                  where: str | None = None, path: str | Path | None = None) -> tuple[int, int]:
    """(parameters, buffer elements) of a timm architecture, built on the ``meta`` device (no memory)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(architecture, pretrained=False, pretrained_cfg_overlay=overlay or None,
                                      **(kwargs or {}))
    except Exception as e:  # any failure to build from these arguments is the config's
        raise ModelConfigError(f"{where or architecture}: cannot be built ({type(e).__name__}: {str(e)[:160]})",
                               path) from e
    return sum(p.numel() for p in model.parameters()), sum(b.numel() for b in model.buffers())


def check_size(params: int, buffers: int, max_params: int, where: str, path: str | Path | None = None) -> None:
    """Refuse a model with more than ``max_params`` parameters and buffer elements together."""
    if params + buffers > max_params:
        raise ModelTooLargeError(
            f"{where} would have {params:,} parameters and {buffers:,} buffer elements (about "
            f"{4 * (params + buffers) / 1e9:.1f} GB in float32), more than max_params={max_params:,}: raise max_params "
            "only for a model you trust and have the memory for", path, params=("max_params",))

