"""Verify a stored result: compute its request again here (never stored) and compare the numbers, array by array.

What a pulled result claims is checked this way (``hubcompare results verify KEY``). The request is the record's,
without its labels and format; computed here it must give the same key (the same models at the same commits and
weights, the same data fingerprint, the same settings and hubcompare version), else nothing is compared and the
inputs that differ are named.
Compared: every array of every ``.npz`` file, and every numeric field of every ``.json`` file (list indices
folded, so ``pairs[*].cka`` is one array), less what a run records about itself (``provenance``, timings,
package versions). Figures and CSV (written from the same numbers) are not compared.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ResultStoreError
from ..models.checkpoint import DEFAULT_MAX_PARAMS
from ..results.keys import result_key
from ..results.store import ResultStore, StoredResult
from .requests import ComparisonRequest, Context, Progress
from .kinds import kind_for
from .run import neutral

__all__ = ["DEFAULT_TOLERANCE", "ArrayCheck", "Verification", "compare_files", "verify_result"]

DEFAULT_TOLERANCE = 1e-4  # float32 passes on another device or thread count agree far closer than this
_SKIPPED = re.compile(r"provenance|package_versions|seconds|.*_s|.*time.*|elapsed|duration|created|started|finished")


@dataclass
class ArrayCheck:
    """One array: ``file`` and ``name`` (an NPZ array, or a JSON field path), its size, and the largest absolute
    difference between stored and recomputed (``inf`` when the shapes differ, one side lacks it, or NaN meets a number)."""

    file: str
    name: str
    size: int
    max_abs_diff: float

    def to_json(self) -> dict:
        diff = self.max_abs_diff if math.isfinite(self.max_abs_diff) else None
        return {"file": self.file, "name": self.name, "size": self.size, "max_abs_diff": diff}


@dataclass
class Verification:
    """A stored result against its recomputation: ``ok`` when every array is within ``tolerance``."""

    key: str
    source: str
    tolerance: float
    seconds: float
    checks: list[ArrayCheck] = field(default_factory=list)

    @property
    def mismatches(self) -> list[ArrayCheck]:
        return [c for c in self.checks if not c.max_abs_diff <= self.tolerance]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and not self.mismatches

    def to_json(self) -> dict:
        return {"key": self.key, "source": self.source, "tolerance": self.tolerance, "ok": self.ok,
                "seconds": round(self.seconds, 2), "arrays": [c.to_json() for c in self.checks],
                "mismatches": [f"{c.file}:{c.name}" for c in self.mismatches]}


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    if a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        return 0.0 if np.array_equal(a, b) else math.inf
    a, b = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        return math.inf
    both = ~nan_a
    return float(np.abs(a[both] - b[both]).max()) if both.any() else 0.0


def _numbers(value: Any, path: str, out: dict[str, list[float]]) -> dict[str, list[float]]:
    """Numeric leaves of JSON by path (list indices folded into ``[*]``); None (a NaN written strictly) is NaN."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not _SKIPPED.fullmatch(str(k)):
                _numbers(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list):
        for v in value:
            _numbers(v, f"{path}[*]", out)
    elif isinstance(value, bool):
        out.setdefault(path or "value", []).append(float(value))
    elif isinstance(value, (int, float)):
        out.setdefault(path or "value", []).append(float(value))
    elif value is None:
        out.setdefault(path or "value", []).append(math.nan)
    return out


def _json_arrays(path: Path) -> dict[str, np.ndarray]:
    doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=float)
    return {name: np.asarray(values, dtype=np.float64) for name, values in _numbers(doc, "", {}).items()}


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: np.asarray(npz[name]) for name in npz.files}


def compare_files(stored_dir: Path, fresh_dir: Path, names: list[str]) -> list[ArrayCheck]:
    """Each array of the ``.npz`` and ``.json`` files ``names`` in both folders, stored against fresh."""
    checks = []
    for name in names:
        reader = _npz_arrays if name.endswith(".npz") else _json_arrays if name.endswith(".json") else None
        if reader is None:
            continue
        old = reader(stored_dir / name)
        new = reader(fresh_dir / name) if (fresh_dir / name).is_file() else {}
        for array in sorted(set(old) | set(new)):
            if _SKIPPED.fullmatch(array):  # an .npz's provenance string: what the run records about itself
                continue
            a, b = old.get(array), new.get(array)
            diff = math.inf if a is None or b is None else _max_abs_diff(a, b)
            checks.append(ArrayCheck(name, array, int((a if a is not None else b).size), diff))
    return checks


def _differing(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two key_inputs differ (dicts walked, anything else compared whole)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b)) for p in _differing(a.get(k), b.get(k), f"{path}.{k}" if path else k)]
    return [] if a == b else [path or "key_inputs"]


def verify_result(stored: StoredResult, *, store: ResultStore, tolerance: float = DEFAULT_TOLERANCE,
                  data_dir: str | Path | None = None, max_params: int = DEFAULT_MAX_PARAMS, device: Any = "auto",
                  compare: Callable | None = None, on_progress: Progress | None = None, cache_dir: str | Path | None = None,
                  registry=None, api=None) -> Verification:
    """Recompute ``stored``'s request here (into a staging folder of ``store``, discarded: the stored result is left as
    it is) and compare every array. ResultStoreError when its inputs are not this machine's (another key)."""
    kind = kind_for(stored.kind)
    # checked as strictly as a service request (fields, types, layer globs); folders may be named: a local comparison's
    # key hashes its folders' weights, so only the very models it was computed from give its key (checked below)
    req = neutral(ComparisonRequest.from_json(stored.request))
    progress = on_progress or (lambda stage, done, total: None)
    prepared = kind.prepare(req, Context(data_dir, max_params, device, cache_dir, registry, api, progress))
    key = result_key(req.kind, prepared.key_inputs)
    if key != stored.key:
        differ = _differing(stored.key_inputs, prepared.key_inputs)
        raise ResultStoreError(f"cannot verify result {stored.key[:12]}: its request computed here has other inputs (key "
                               f"{key[:12]}); they differ in {', '.join(differ[:6]) or 'their encoding'}: the models, "
                               "data and hubcompare version must be the ones it was computed from")
    started = time.perf_counter()
    with store.staging() as staging:
        kind.compute(req, prepared, staging, progress, compare)
        checks = compare_files(stored.path, staging, stored.files)
    return Verification(stored.key, stored.source, float(tolerance), time.perf_counter() - started, checks)
