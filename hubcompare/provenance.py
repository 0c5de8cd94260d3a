"""What goes into every result so it can be regenerated: package versions, file hashes, atomic writes.

A leaf: every capability writes its files through here, so none imports another to save a file."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import re
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["package_versions", "sha256_file", "git_blob_oid", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "atomic_write_figure"]

PACKAGES = ("hubcompare", "torch", "timm", "huggingface_hub", "safetensors", "numpy", "scipy", "scikit-learn")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of ``data``: what the Hub reports as a regular file's oid (client and server agree on it)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file beside ``path`` and rename it over: readers never see half a file.

    The temporary file is ``.NAME.PID.RANDOM.tmp``; ones a killed write of the same target left behind
    are removed first (see :func:`_remove_stale_tmp`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


STALE_TMP_AGE_S = 600  # a temporary file without a pid in its name is left alone until it is this old
LIVE_TMP_AGE_S = 86400  # one whose pid is alive (or reused) is left alone until it is this old
_TMP_REST = re.compile(r"(?:(?P<pid>[0-9]+)\.)?[a-z0-9_]{8}")  # [PID.]RANDOM: mkstemp's 8 characters


def _remove_stale_tmp(path: Path) -> None:
    """Remove the temporary files a killed write of ``path`` left beside it: those whose writer's pid is
    dead, and old ones (a concurrent writer's file is never touched: its pid is alive and it is fresh)."""
    prefix, now = f".{path.name}.", time.time()
    try:
        with os.scandir(path.parent) as it:
            entries = [e for e in it if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return
    for entry in entries:
        match = _TMP_REST.fullmatch(entry.name[len(prefix):-len(".tmp")])
        if match is None:  # another target's file (e.g. NAME.bak's), or not ours at all
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            pid = match["pid"]
            if (pid is None and age > STALE_TMP_AGE_S) or age > LIVE_TMP_AGE_S or (pid is not None and not _alive(int(pid))):
                os.unlink(entry.path)
        except OSError:  # gone already (another writer cleaned it), or not ours to remove
            pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except PermissionError:  # someone else's process
        return True
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or not a pid at all
        return False
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Strict JSON (any parser reads it): NaN and infinities, which ``json`` would write bare, become null."""
    return atomic_write_text(path, json.dumps(strict_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def strict_json(obj: Any) -> Any:
    """A JSON-ready copy in which NaN and infinities (which ``json`` writes bare, breaking strict parsers) are None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def atomic_write_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Render a matplotlib ``Figure`` to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())
