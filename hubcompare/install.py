"""Whether torch and torchvision were installed as a pair. No printing.

A mismatched pair (torchvision built for another torch, as a CPU-only index line followed by a plain
``pip install`` can leave) fails on the first ``import timm`` with an untyped ``RuntimeError: operator
torchvision::nms does not exist`` (or an ``ImportError`` from torchvision's C extension). The CLI's one
error boundary turns such an exception into :class:`~hubcompare.errors.InstallError` through
:func:`torch_pair_problem`: one line naming both versions and the pip line that fixes them.
"""

from __future__ import annotations

import re
import traceback
from importlib import metadata

from .errors import InstallError

__all__ = ["installed_version", "matching_torchvision", "torch_pair_problem"]

# torchvision 0.N pairs with torch 2.(N - 15): 0.16 <-> 2.1, 0.29 <-> 2.14 (pytorch.org's compatibility table)
TORCHVISION_MINOR_OFFSET = 15


def installed_version(distribution: str) -> str | None:
    """A distribution's version from its metadata (nothing is imported); None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str | None) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(match[1]), int(match[2])) if match else None


def matching_torchvision(torch_version: str | None) -> str | None:
    """The torchvision release (``0.N``) built for a torch 2.x version; None for versions outside that rule."""
    release = _release(torch_version)
    if release is None or release[0] != 2:
        return None
    return f"0.{release[1] + TORCHVISION_MINOR_OFFSET}"


def _raised_in_torchvision(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if "torchvision" in str(exc) or any("torchvision" in frame.filename.replace("\\", "/").split("/")
                                            for frame in traceback.extract_tb(exc.__traceback__)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def torch_pair_problem(exc: BaseException) -> InstallError | None:
    """An :class:`InstallError` when ``exc`` is torchvision failing to load; None for any other exception."""
    if not isinstance(exc, (RuntimeError, ImportError, AttributeError, OSError)) or not _raised_in_torchvision(exc):
        return None
    torch_v, vision_v = installed_version("torch"), installed_version("torchvision")
    wanted = matching_torchvision(torch_v)
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    pair = f"torch {torch_v or '(not installed)'} with torchvision {vision_v or '(not installed)'}"
    if wanted and vision_v and _release(vision_v) != _release(wanted):
        return InstallError(f"{pair} do not match (torch {torch_v} needs torchvision {wanted}.x), so torchvision cannot "
                            f"load ({first_line}): install the pair together, e.g. pip install --force-reinstall "
                            f"'torch=={torch_v}' 'torchvision=={wanted}.*' (same index for both).")
    return InstallError(f"torchvision cannot load ({first_line}; {pair}): reinstall torch and torchvision together from "
                        "one index, e.g. pip install --force-reinstall torch torchvision.")
