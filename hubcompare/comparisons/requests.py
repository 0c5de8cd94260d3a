"""A comparison request: what to compare, on which data, with which settings; the one input of :func:`.run.run_request`.

The CLI builds one from its options, the service from a JSON body (:meth:`ComparisonRequest.from_json`, strict:
unknown fields, wrong types, sizes out of range, layer globs outside a small character set and, with
``allow_paths=False``, references to the server's file system are refused with an :class:`InvalidRequestError`
naming the field and the fix). Every request, however built, is checked on construction (types, ranges, counts).

``labels`` and ``fmt`` only change how a result is presented: they are not part of its content key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from ..data.datasets import DATASETS, SPLITS
from ..errors import InvalidNameError, InvalidReferenceError, InvalidRequestError, short_repr
from ..hub.names import check_collection_slug, parse_reference
from ..hub.sidespec import FILE_PREFIX, is_local_folder, side_items
from ..similarity.cka import MIN_BATCH
from .kinds import kind_names, spec_for
from .kindspec import MAX_EXAMPLES, MAX_MODELS, Context, Prepared, Progress, bad_field

__all__ = ["FIGURE_FORMATS", "KINDS", "MAX_EXAMPLES", "MAX_MODELS", "ComparisonRequest", "Context", "Prepared", "Progress"]

KINDS = kind_names()  # every registered kind (each declares its own checks: kinds.spec_for)
FIGURE_FORMATS = ("png", "pdf", "svg")

MAX_REF_CHARS = 1000
MAX_LABEL_CHARS = 200
MAX_GLOBS = 32
MAX_GLOB_CHARS = 100
GLOB = re.compile(r"[A-Za-z0-9_.*?\[\]-]+")  # what the service accepts in a layer glob
MAX_BATCH = 1 << 16
MAX_PASSES = 1000
SEED_MAX = 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_bad = bad_field


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(name: str, v: Any, low: int, high: int, fix: str) -> None:
    if not _is_int(v):
        raise _bad(name, f"{short_repr(v)} is not a whole number", fix)
    if not low <= v <= high:
        raise _bad(name, f"{v} is out of range", fix)


def _text(name: str, v: Any, limit: int) -> None:
    if not isinstance(v, str) or not v.strip():
        raise _bad(name, f"{short_repr(v)} is not a non-empty string", "give text")
    if len(v) > limit or _CONTROL.search(v):
        raise _bad(name, f"{short_repr(v)} is longer than {limit} characters or holds control characters",
                   f"give at most {limit} printable characters")


@dataclass(frozen=True)
class ComparisonRequest:
    """One comparison: ``kind`` (one of :data:`KINDS`) of ``refs`` (as many as the kind's spec says: model references,
    or side specs) on ``dataset``/``split`` (default: the models' training dataset), with the pass settings (``layers``
    globs, ``batch_size`` (default: chosen for the standard errors), ``passes``, ``seed``, ``examples``: the first N of
    the split) and kind-specific ``options`` (typed in the kind's :class:`~.kindspec.KindSpec`)."""

    kind: str
    refs: tuple[str, ...]
    dataset: str | None = None
    split: str = "test"
    layers: tuple[str, ...] | None = None
    batch_size: int | None = None
    passes: int = 1
    seed: int = 0
    examples: int | None = None
    options: dict = field(default_factory=dict)
    labels: tuple[str | None, ...] | None = None  # presentation only: not in the key
    fmt: str = "png"  # presentation only: not in the key

    def __post_init__(self) -> None:
        for name in ("refs", "layers", "labels"):  # lists from a caller become tuples (the request is immutable)
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "options", dict(self.options or {}))
        self._check()

    # --- checks every request passes ----------------------------------------------------------
    def _check(self) -> None:
        spec = spec_for(self.kind)  # an unknown kind: a typed error naming the registered ones
        self._check_refs()
        if self.dataset is not None and self.dataset not in DATASETS:
            raise _bad("dataset", f"dataset {short_repr(self.dataset)} is unknown", f"choose one of {', '.join(DATASETS)}")
        if self.split not in SPLITS:
            raise _bad("split", f"split {short_repr(self.split)} is unknown", "choose 'train' or 'test'")
        if self.layers is not None:
            if not isinstance(self.layers, tuple) or not 0 < len(self.layers) <= MAX_GLOBS:
                raise _bad("layers", f"{short_repr(self.layers)} is not a list of 1 to {MAX_GLOBS} globs",
                           "give layer globs such as '*.out', or none for the default layers")
            for i, g in enumerate(self.layers):
                _text(f"layers[{i}]", g, MAX_GLOB_CHARS)
        estimator = spec.estimator  # the unbiased HSIC estimator's minimum sizes apply
        if self.batch_size is not None:
            _int("batch_size", self.batch_size, 1, MAX_BATCH,
                 f"give {MIN_BATCH if estimator else 1} to {MAX_BATCH}, or none to have one chosen")
            if estimator and self.batch_size < MIN_BATCH:
                raise _bad("batch_size", f"batch_size {self.batch_size} is too small: the unbiased HSIC estimator needs "
                           "n > 3 examples per batch", "use >= 64 (the paper uses 256)")
        _int("passes", self.passes, 1, MAX_PASSES, f"give 1 to {MAX_PASSES} passes")
        _int("seed", self.seed, 0, SEED_MAX, f"give a seed from 0 to {SEED_MAX}")
        if self.examples is not None:
            _int("examples", self.examples, 1, MAX_EXAMPLES, f"give 1 to {MAX_EXAMPLES:,} examples, or none for the whole split")
            if estimator and self.examples < MIN_BATCH:
                raise _bad("examples", f"{self.examples} examples are too few for the unbiased estimator",
                           f"give at least {MIN_BATCH} examples (hundreds for useful standard errors)")
        for name, default in spec.fixed.items():
            if getattr(self, name) != default:
                raise _bad(name, f"{self.kind} {spec.fixed_why}, so {name} does not apply", f"leave {name} out")
        spec.check_options(self.options)
        if self.labels is not None:
            wanted = 2 if spec.sides else len(self.refs)
            if not isinstance(self.labels, tuple) or len(self.labels) != wanted:
                raise _bad("labels", f"{short_repr(self.labels)} is not {wanted} label(s), one per "
                           f"{'side' if spec.sides else 'model'}", "give one label (or null) each, in order")
            for i, lab in enumerate(self.labels):
                if lab is not None:
                    _text(f"labels[{i}]", lab, MAX_LABEL_CHARS)
        if self.fmt not in FIGURE_FORMATS:
            raise _bad("fmt", f"figure format {short_repr(self.fmt)} is unknown", f"choose one of {', '.join(FIGURE_FORMATS)}")

    def _check_refs(self) -> None:
        if not isinstance(self.refs, tuple) or not all(isinstance(r, str) for r in self.refs):
            raise _bad("refs", f"{short_repr(self.refs)} is not a list of references", "give model references as strings")
        n, spec = len(self.refs), spec_for(self.kind)
        want, what = spec.refs, spec.what_refs
        if not want[0] <= n <= want[1]:
            count = str(want[0]) if want[0] == want[1] else f"{want[0]} to {want[1]}"
            raise _bad("refs", f"{self.kind} takes {count} {what}, got {n}", f"give {count} {what}")
        for i, r in enumerate(self.refs):
            _text(f"refs[{i}]", r, MAX_REF_CHARS)

    # --- JSON -------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"kind": self.kind, "refs": list(self.refs), "dataset": self.dataset, "split": self.split,
                "layers": list(self.layers) if self.layers is not None else None, "batch_size": self.batch_size,
                "passes": self.passes, "seed": self.seed, "examples": self.examples, "options": dict(self.options),
                "labels": list(self.labels) if self.labels is not None else None, "fmt": self.fmt}

    @classmethod
    def from_json(cls, d: dict, *, allow_paths: bool = True) -> ComparisonRequest:
        """A request from untrusted JSON: unknown fields, JSON types other than the field's, layer globs outside
        ``[A-Za-z0-9_.*?[]-]`` (at most 32, 100 characters each) and, unless ``allow_paths``, any reference the
        resolver would open as a folder or file on this machine are refused (:class:`InvalidRequestError`)."""
        if not isinstance(d, dict):
            raise InvalidRequestError(f"the request is {type(d).__name__}, not an object: send a JSON object with "
                                      "'kind' and 'refs'", None)
        names = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in names)
        if unknown:
            raise _bad(unknown[0], "is not a request field", f"use only {', '.join(names)}")
        for required in ("kind", "refs"):
            if required not in d:
                raise _bad(required, "is missing", "every request names its kind and refs")
        for name in ("refs", "layers", "labels"):
            v = d.get(name)
            if v is not None and not isinstance(v, list):
                raise _bad(name, f"{short_repr(v)} is not a list", f"give {name} as a JSON list")
        for name in ("kind", "split", "fmt") + (("dataset",) if d.get("dataset") is not None else ()):
            if name in d and not isinstance(d[name], str):
                raise _bad(name, f"{short_repr(d[name])} is not a string", f"give {name} as a string")
        for name in ("batch_size", "passes", "seed", "examples"):  # JSON 2.0 or true is not a count
            if d.get(name) is not None and not _is_int(d[name]):
                raise _bad(name, f"{short_repr(d[name])} is not a whole number", f"give {name} as an integer")
        if "options" in d and not isinstance(d["options"], dict):
            raise _bad("options", f"{short_repr(d['options'])} is not an object", "give options as a JSON object")
        req = cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if v is not None or k in
                     ("dataset", "layers", "batch_size", "examples", "labels")})
        for i, g in enumerate(req.layers or ()):
            if not GLOB.fullmatch(g):
                raise _bad(f"layers[{i}]", f"{short_repr(g)} holds characters a layer glob does not use",
                           "use letters, digits and _ . - * ? [ ] (e.g. 'stage2.*.out')")
        for i, r in enumerate(req.refs):
            req._check_reference(f"refs[{i}]", r.strip(), allow_paths)
        for opt in spec_for(req.kind).options:
            v = req.options.get(opt.name)
            if opt.names_a_file(v) and not allow_paths:
                raise _bad(f"options.{opt.name}", f"{short_repr(v)} names a file on the server",
                           f"choose one of {', '.join(opt.schema()['enum'])}")
        return req

    def _check_reference(self, where: str, ref: str, allow_paths: bool) -> None:
        """A model reference (or, for population kinds, a side spec) that parses; a path on this machine only when
        ``allow_paths``."""
        if spec_for(self.kind).sides:
            if ref.startswith(FILE_PREFIX):
                if not allow_paths:
                    raise _bad(where, f"{short_repr(ref)} names a file on the server", _NO_PATHS)
                return
            items = side_items(ref, is_local_folder)
            if len(items) > 1:
                for item in items:
                    self._check_reference(where, item.text, allow_paths)
                return
            item = items[0]
            if item.scheme is not None and item.rest:
                if item.scheme == "collection":  # a slug is a Hub path: the name rules, before any request
                    try:
                        check_collection_slug(item.rest)
                    except InvalidNameError as e:
                        raise _bad(where, str(e), "a slug names one collection, never another Hub path") from None
                return
        try:
            parsed = parse_reference(ref)
        except (InvalidReferenceError, InvalidNameError) as e:
            raise _bad(where, str(e).splitlines()[0], "give a reference such as hf-hub:OWNER/NAME[@REV], timm:NAME or a "
                       "registry name") from None
        if parsed.kind == "local-dir" and not allow_paths:
            raise _bad(where, f"{short_repr(ref)} names a folder on the server", _NO_PATHS)


_NO_PATHS = ("the service does not open paths: use hf-hub:OWNER/NAME[@REV], timm:NAME, a registry name "
             "(population sides: population:NAME, registry:KEY=VALUE, hf-tag:TAG, collection:SLUG, joined by '+')")
