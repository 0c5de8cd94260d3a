"""How big a pulled result may be: every limit in one place, checked before anything is stored.

A shared result comes from someone else's repo, so its size is the sender's choice. These limits are what the largest
result hubcompare itself computes needs, with headroom, and no more:

- ``max_layers`` = 640: every block output of the deepest CIFAR ResNet hubcompare builds (ResNet-1202: 3 x 200 blocks
  plus the stem, 601 taps) fits; a 640 x 640 float64 matrix is 3.3 MB, its JSON about 8 MB, and a page draws it.
- ``max_file_bytes`` = 64 MiB: the largest file a result writes is ``blocks.json`` (four layer x layer matrices, about
  33 MB at 640 layers); figures are a few MB. An ``.npz``'s members, uncompressed, count against it too.
- ``max_total_bytes`` = 256 MiB: four files at the limit; real results are a few MB.
- ``max_files`` = 1500: ``cross-cka`` of the most models one request may name (32) writes 3 files for each of its 496
  pairs and a grid figure: 1489.
- ``max_npz_members`` = 64: a result's arrays are named (cka, se, layers, ...), a handful per file.
- ``max_json_depth`` = 64: result JSON nests a few levels; deeper is a parser attack.
- ``max_record_bytes`` = 16 MiB: ``hubcompare-result.json`` holds the request, what the key hashes and the summary
  (kilobytes; the summary of a 32-model cross-cka lists 496 pairs).

Every refusal is a :class:`~hubcompare.errors.SharedResultTooLargeError` naming the limit, its value and how big the
thing was.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SharedResultError, SharedResultTooLargeError

__all__ = ["PullLimits", "DEFAULT_LIMITS", "ALLOWED_DTYPE_KINDS", "over", "check_listing", "check_npz"]

ALLOWED_DTYPE_KINDS = "biufcU"  # booleans, integers, floats, complex, unicode text: never objects, records or bytes


@dataclass(frozen=True)
class PullLimits:
    max_layers: int = 640
    max_file_bytes: int = 64 << 20
    max_total_bytes: int = 256 << 20
    max_files: int = 1500
    max_npz_members: int = 64
    max_json_depth: int = 64
    max_record_bytes: int = 16 << 20


DEFAULT_LIMITS = PullLimits()


def _human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"


def over(limits: PullLimits, limit: str, size: int, what: str, unit: str = "bytes") -> None:
    """Refuse ``what`` when ``size`` is over ``limits.<limit>``: the error names the limit and both sizes."""
    maximum = getattr(limits, limit)
    if size > maximum:
        said = (_human(size), _human(maximum)) if unit == "bytes" else (f"{size:,} {unit}", f"{maximum:,} {unit}")
        raise SharedResultTooLargeError(f"{what} is {said[0]}, over the pull limit {limit} = {said[1]}: a result "
                                        "hubcompare computes is smaller, so it is refused and nothing is stored",
                                        limit=limit, size=size, maximum=maximum)


def check_listing(sizes: dict[str, int | None], where: str, limits: PullLimits) -> None:
    """The number of files, each file's size and their total (None: a size the listing did not give: checked on disk)."""
    over(limits, "max_files", len(sizes), f"{where}: the number of files", unit="files")
    for name, size in sizes.items():
        if size is not None:
            over(limits, "max_file_bytes", size, f"{where}: {name}")
    over(limits, "max_total_bytes", sum(s or 0 for s in sizes.values()), f"{where}: the files together")


def check_npz(path: Path, where: str, limits: PullLimits) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each member's declared shape and dtype, read from its .npy header (a few bytes decompressed), checked against the
    limits before any array is read: a small zip of a huge array is refused without unpacking it. Returns
    ``{member: (shape, dtype)}``."""
    found, total = {}, 0
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        over(limits, "max_npz_members", len(infos), f"{where}: {path.name}'s arrays", unit="arrays")
        for info in infos:
            member = f"{path.name}:{info.filename}"
            if not info.filename.endswith(".npy") or "/" in info.filename or info.is_dir():
                raise SharedResultError(f"{where}: {member} is not an array (.npy) of an .npz")
            over(limits, "max_file_bytes", info.file_size, f"{where}: {member} (declared uncompressed size)")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=10_000)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=10_000)
                else:
                    raise SharedResultError(f"{where}: {member} has an unknown .npy version {version}")
                header = f.tell()
            if dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.hasobject or dtype.fields is not None:
                raise SharedResultError(f"{where}: {member} has dtype {dtype}: a result's arrays are numbers or text "
                                        "(objects would need a pickle)")
            count = 1
            for dim in shape:
                count *= int(dim)
            nbytes = count * dtype.itemsize
            over(limits, "max_file_bytes", nbytes, f"{where}: {member} (shape {tuple(shape)}, {dtype})")
            if header + nbytes != info.file_size:
                raise SharedResultError(f"{where}: {member} declares {nbytes:,} bytes of data but holds "
                                        f"{info.file_size - header:,}: it is corrupt")
            total += nbytes
            found[info.filename[:-4]] = (tuple(int(d) for d in shape), dtype)
    over(limits, "max_file_bytes", total, f"{where}: {path.name}'s arrays together (uncompressed)")
    return found
