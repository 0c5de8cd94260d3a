"""Where models run: a device from what a user typed, a record of it for provenance, and exact float32 on GPUs.

``resolve_device("auto" | "cpu" | "cuda" | "cuda:N" | "mps")`` checks the string and that the device is
here (``auto``: CUDA, then MPS, then the CPU) and raises :class:`~hubcompare.errors.DeviceError` naming
the devices that are. :func:`describe_device` is what results record. :func:`exact_float32` turns
TensorFloat-32 off for cuBLAS products and cuDNN convolutions: TF32 keeps 10 mantissa bits (float32: 23),
which silently breaks CKA's 1e-6 bound against the float64 reference.

float64 on GPUs: data-centre GPUs run it at half their float32 rate or better; consumer GPUs at 1/32 to
1/64 of it, and MPS not at all. :func:`fast_float64` says which (by compute capability); the CKA engine
uses it to choose how it forms each minibatch's HSIC products (:mod:`hubcompare.similarity.cka`).

Layout: on the CPU, oneDNN runs float32 convolutions channels-last ~1.3-1.5x faster than NCHW (CIFAR ResNets,
``benchmarks/cka_speed.py``) with the same float32 arithmetic; :func:`channels_last_helps` says where that is
known to hold and :func:`memory_format` puts models in a layout for a block and back after.
"""

from __future__ import annotations

import platform
import re
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import DeviceError

__all__ = ["DEVICE_FORMS", "available_devices", "resolve_device", "describe_device", "exact_float32", "fast_float64",
           "float64_device", "module_device", "on_device", "synchronize", "peak_memory_bytes", "MEMORY_FORMATS",
           "channels_last_helps", "memory_format"]

DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"
_SPEC = re.compile(r"auto|cpu|mps|cuda(?::(?P<index>[0-9]{1,4}))?")
# compute capabilities whose float64 runs at >= 1/2 of float32 (P100, V100, A100, H100/H200, B200); every other
# GPU (GeForce, RTX workstation, Jetson, B300, ...) has 1/32-1/64 rate float64
FAST_FLOAT64_CAPABILITIES = {(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)}
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices this machine offers, as :func:`resolve_device` accepts them."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device ``spec`` names, checked to be here. ``auto`` (or None): the first CUDA device (the
    current one), else MPS, else the CPU. Raises :class:`DeviceError` for a malformed string or a device this
    machine does not have."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    here = ", ".join(available_devices())
    match = _SPEC.fullmatch(text)
    if match is None:
        raise DeviceError(f"device {spec!r} is not one of {DEVICE_FORMS} (N: a CUDA device number, 0 first); "
                          f"this machine has {here}.", params=("device",))
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise DeviceError(f"MPS (Apple-silicon GPUs) is not available here: choose auto or one of {here}.",
                              params=("device",))
        return torch.device("mps")
    if not torch.cuda.is_available():
        why = (f"this torch ({torch.__version__}) is built without CUDA" if torch.version.cuda is None
               else f"torch (built for CUDA {torch.version.cuda}) sees no GPU: check the driver and CUDA_VISIBLE_DEVICES")
        raise DeviceError(f"CUDA is not available here ({why}): choose auto or one of {here}.", params=("device",))
    count = torch.cuda.device_count()
    index = match["index"]
    if index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if int(index) >= count:
        raise DeviceError(f"there is no CUDA device {int(index)}: this machine has {count} ({here}).", params=("device",))
    return torch.device("cuda", int(index))


def describe_device(device: str | torch.device) -> dict:
    """What a result records about the device it was computed on: type, name, capability, and for CUDA the
    CUDA and cuDNN versions torch was built with and the GPU's memory."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        return {"type": "cuda", "index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda, "cudnn": cudnn,
                "fast_float64": fast_float64(dev)}
    if dev.type == "mps":
        return {"type": "mps", "name": "Apple MPS", "macos": platform.mac_ver()[0] or None}
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: None)()
    return {"type": dev.type, "name": platform.machine() or platform.processor() or None, "capability": capability,
            "threads": torch.get_num_threads()}


def fast_float64(device: str | torch.device) -> bool:
    """Whether float64 matrix products are cheap on ``device``: the CPU and data-centre GPUs (see
    ``FAST_FLOAT64_CAPABILITIES``); not consumer GPUs, and not MPS (which has no float64)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_capability(dev) in FAST_FLOAT64_CAPABILITIES
    return dev.type == "cpu"


def float64_device(device: str | torch.device) -> torch.device:
    """Where float64 work for ``device`` happens: the device itself, or the CPU for MPS (no float64 there)."""
    dev = torch.device(device)
    return torch.device("cpu") if dev.type == "mps" else dev


def _tf32_flags() -> list[tuple[object, str, str]]:
    """(object, attribute, value that means 'no TF32') for the cuBLAS matmul and cuDNN convolution settings:
    torch >= 2.9 spells them ``fp32_precision`` and refuses a mix of that and the older ``allow_tf32``."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
        return [(matmul, "fp32_precision", "ieee"), (conv, "fp32_precision", "ieee")]
    return [(matmul, "allow_tf32", False), (cudnn, "allow_tf32", False)]


def _onednn_flags() -> list[tuple[object, str, str]]:
    """The same for oneDNN on the CPU (torch >= 2.9): ``ieee`` keeps its float32 matmul and convolutions from
    running in bf16 or TF32 whatever ``torch.set_float32_matmul_precision`` says."""
    mkldnn = torch.backends.mkldnn
    return [(obj, "fp32_precision", "ieee") for obj in (getattr(mkldnn, "matmul", None), getattr(mkldnn, "conv", None))
            if obj is not None and hasattr(obj, "fp32_precision")]


@contextmanager
def exact_float32() -> Iterator[None]:
    """float32 matrix products and convolutions in full float32 inside the block: TF32 off on CUDA, no bf16 or
    TF32 in oneDNN on the CPU; the settings before it are restored after."""
    flags = _tf32_flags() + _onednn_flags()
    saved = [getattr(obj, attr) for obj, attr, _ in flags]
    try:
        for obj, attr, value in flags:
            setattr(obj, attr, value)
        yield
    finally:
        for (obj, attr, _), value in zip(flags, saved):
            setattr(obj, attr, value)


def module_device(module: nn.Module) -> torch.device:
    """Where a module's parameters are (the CPU for one without parameters)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def on_device(modules: Sequence[nn.Module], device: torch.device) -> Iterator[None]:
    """The modules on ``device`` inside the block, and back where each was after it."""
    places = [module_device(m) for m in modules]
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m, place in zip(modules, places):
            m.to(place)


def channels_last_helps(device: str | torch.device) -> bool:
    """Whether float32 convolutions are known to run faster channels-last on ``device``: the CPU with oneDNN.
    GPUs are not measured here in exact float32 (TF32 off), so they keep NCHW unless asked."""
    return torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()


@contextmanager
def memory_format(modules: Sequence[nn.Module], fmt: torch.memory_format) -> Iterator[None]:
    """The modules' 4-D parameters and buffers laid out in ``fmt`` inside the block, and each back in the strides
    it had after it. Only the layout changes, never a value; one tensor at a time is copied, so the models' memory
    does not double."""
    changed: list[tuple[torch.Tensor, tuple[int, ...]]] = []
    seen: set[int] = set()
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            dense = t.dim() == 4 and (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last))
            if id(t) in seen or not dense or t.is_contiguous(memory_format=fmt):
                continue
            seen.add(id(t))
            changed.append((t, t.stride()))
            t.data = t.data.contiguous(memory_format=fmt)
    try:
        yield
    finally:
        for t, stride in changed:
            t.data = torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t.data)


def synchronize(device: str | torch.device) -> None:
    """Wait for the work queued on ``device`` (for timing); nothing to wait for on the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def peak_memory_bytes(device: str | torch.device) -> int | None:
    """The most memory torch's allocator has held on a CUDA device since its last reset (None elsewhere)."""
    dev = torch.device(device)
    return torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
