"""Content keys: a result is named by the sha256 of what changes its numbers, written as canonical JSON.

The same inputs give the same key on any machine and in any process (sorted keys, no spaces, floats
written with ``repr`` so they round-trip exactly, tuples as lists); anything JSON cannot say exactly
(NaN, infinities, non-string keys, arbitrary objects) is refused rather than silently coerced, so two
different requests can never share a key.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from ..errors import ResultKeyInputError, short_repr

__all__ = ["KEY_SCHEMA", "canonical_json", "result_key"]

KEY_SCHEMA = 1  # bump when what a key hashes changes meaning: old keys then never match new requests


def _check(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON types (numpy scalars unwrapped, tuples as lists), or a ResultKeyInputError naming where."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ResultKeyInputError(f"{where} is {obj!r}: a result key cannot hash NaN or infinities (give a finite "
                                      "number, or None for 'not set')")
        return float(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ResultKeyInputError(f"{where} has the key {short_repr(k)} ({type(k).__name__}): keys of what a "
                                          "result key hashes must be strings")
            out[k] = _check(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_check(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    item = getattr(obj, "item", None)  # numpy scalars (np.int64, np.float32, np.bool_)
    if callable(item) and type(obj).__module__ == "numpy" and getattr(obj, "shape", None) == ():
        return _check(item(), where)
    raise ResultKeyInputError(f"{where} is a {type(obj).__name__} ({short_repr(obj)}): a result key hashes only JSON "
                              "values (str, int, float, bool, None, lists, dicts with string keys)")


def canonical_json(obj: Any) -> bytes:
    """``obj`` as canonical JSON bytes: sorted keys, no spaces, floats exact (repr), UTF-8; NaN and objects refused."""
    return json.dumps(_check(obj, "value"), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def result_key(kind: str, key_inputs: dict) -> str:
    """The 64-hex content key of a result of ``kind`` computed from ``key_inputs`` (models, dataset, settings)."""
    if not isinstance(kind, str) or not kind:
        raise ResultKeyInputError(f"kind {short_repr(kind)}: a result kind is a non-empty string, e.g. 'cross-cka'")
    if not isinstance(key_inputs, dict):
        raise ResultKeyInputError(f"key_inputs is a {type(key_inputs).__name__}: it must be a dict")
    inputs = _check(key_inputs, "key_inputs")  # errors name the field, e.g. key_inputs.settings.alpha
    return hashlib.sha256(canonical_json({"kind": kind, "inputs": inputs, "schema": KEY_SCHEMA})).hexdigest()
