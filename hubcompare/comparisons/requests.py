"""A comparison request: what to compare, on which data, with which settings; the one input of :func:`.run.run_request`.

The CLI builds one from its options, the service from a JSON body (:meth:`ComparisonRequest.from_json`, strict:
unknown fields, wrong types, sizes out of range, layer globs outside a small character set and, with
``allow_paths=False``, references to the server's file system are refused with an :class:`InvalidRequestError`
naming the field and the fix). Every request, however built, is checked on construction (types, ranges, counts).

``labels`` and ``fmt`` only change how a result is presented: they are not part of its content key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ..data.datasets import DATASETS, SPLITS
from ..errors import InvalidNameError, InvalidReferenceError, InvalidRequestError, MeasureError, short_repr
from ..hub.names import check_collection_slug, parse_reference
from ..hub.sidespec import FILE_PREFIX, is_local_folder, side_items
from ..models.checkpoint import DEFAULT_MAX_PARAMS
from ..similarity.cka import MIN_BATCH
from ..similarity.measures import measure_from_key, measure_names

__all__ = ["CKA_KINDS", "FIGURE_FORMATS", "KINDS", "OPTION_SPECS", "POPULATION_KINDS", "PROBE_KINDS", "SIDE_KINDS",
           "ComparisonRequest", "Context", "Prepared", "Progress"]

KINDS = ("cross-cka", "compare", "cka", "blocks", "agreement", "class-diff", "across-seeds", "probes", "delete-blocks")
CKA_KINDS = ("cross-cka", "compare", "cka", "blocks")  # a pass over minibatches: layers, batch size, passes, examples apply
POPULATION_KINDS = ("agreement", "class-diff")  # two sides' predictions: refs are two side specs
SIDE_KINDS = POPULATION_KINDS + ("across-seeds",)  # refs are two side specs (population:NAME, A+B, @FILE, ...)
PROBE_KINDS = ("probes", "delete-blocks")  # one model on the test split; minibatches of any size, no CKA estimator
# kind -> request fields that do not apply to it, with the value they must keep (the default)
NOT_APPLICABLE: dict[str, dict[str, Any]] = {
    "agreement": {"split": "test", "layers": None, "batch_size": None, "passes": 1, "examples": None},
    "class-diff": {"split": "test", "layers": None, "batch_size": None, "passes": 1, "examples": None},
    "probes": {"split": "test", "passes": 1, "labels": None},
    "delete-blocks": {"split": "test", "layers": None, "passes": 1, "seed": 0, "labels": None},
}
FIGURE_FORMATS = ("png", "pdf", "svg")

MAX_MODELS = 32  # cross-cka, compare: models in one pass
MAX_MEASURES = 16  # compare: measures in one pass
MAX_REF_CHARS = 1000
MAX_LABEL_CHARS = 200
MAX_GLOBS = 32
MAX_GLOB_CHARS = 100
GLOB = re.compile(r"[A-Za-z0-9_.*?\[\]-]+")  # what the service accepts in a layer glob
MAX_BATCH = 1 << 16
MAX_PASSES = 1000
MAX_EXAMPLES = 10_000_000
SEED_MAX = 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# kind -> option -> (type, low, high) or (str, choices): every kind-specific setting a request may carry
OPTION_SPECS: dict[str, dict[str, tuple]] = {
    "cross-cka": {},
    "compare": {"measures": ("measures", 1, MAX_MEASURES)},  # measure keys: rsa, rbf-cka(frac=0.5), ... (default: cka)
    "cka": {},
    "blocks": {
        "pc_examples": (int, 2, 1_000_000),
        "pc1_threshold": (float, 0.0, 1.0),
        "cka_threshold": (float, 0.0, 1.0),
        "min_size": (int, 1, 10_000),
        "max_gap": (int, 0, 10_000),
        "min_mean_pc1": (float, 0.0, 1.0),
    },
    "agreement": {
        "splits": (int, 1, 100_000),
        "permutations": (int, 1, 100_000),
        "null_side": (str, ("a", "b", "auto")),
    },
    "class-diff": {
        "alpha": (float, 1e-6, 0.5),
        "splits": (int, 1, 100_000),
        "null_side": (str, ("a", "b", "auto")),
    },
    "across-seeds": {
        "pc_examples": (int, 2, 1_000_000),
        "max_memory_gb": (float, 0.01, 1e6),  # refuses a pass over it before any work; not in the key (numbers unchanged)
    },
    "probes": {
        "pool": (bool,),
        "l2": (list, 1e-12, 1e12, 32),  # the L2 grid: 1 to 32 positive numbers
        "validation_fraction": (float, 0.0, 1.0),  # strictly inside (0, 1): checked with the kind's fields
        "train_examples": (int, 2, MAX_EXAMPLES),
        "max_iter": (int, 1, 100_000),
        "memory_gb": (float, 1e-12, 1e6),  # features held at once: not in the key (numbers unchanged)
        "blocks": (Path, ("auto", "none")),  # or a blocks JSON file on this machine (never from the service)
    },
    "delete-blocks": {
        "blocks": (Path, ("auto", "none")),
    },
}
# request field -> the library parameter a front end maps to its own option (HubcompareError.params)
_PARAM = {"examples": "num_examples", "fmt": "format", "batch_size": "batch_size", "passes": "passes", "layers": "layers",
          "dataset": "dataset", "seed": "seed", "split": "split"}


def _bad(name: str, problem: str, fix: str) -> InvalidRequestError:
    param = _PARAM.get(name.split(".")[-1] if name.startswith("options.") else name, name.split(".")[-1])
    return InvalidRequestError(f"{name}: {problem}; {fix}", name, params=(param,))


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
    """One comparison: ``kind`` (one of :data:`KINDS`) of ``refs`` (cka, blocks: one model reference; cross-cka: two or
    more; agreement, class-diff: two side specs) on ``dataset``/``split`` (default: the models' training dataset), with
    the pass settings (``layers`` globs, ``batch_size`` (default: chosen for the standard errors), ``passes``, ``seed``,
    ``examples``: the first N of the split) and kind-specific ``options`` (:data:`OPTION_SPECS`)."""

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
        if self.kind not in KINDS:
            raise _bad("kind", f"{short_repr(self.kind)} is not a comparison kind", f"use one of {', '.join(KINDS)}")
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
        estimator = self.kind not in PROBE_KINDS  # the unbiased HSIC estimator's minimum sizes apply
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
        why = {"agreement": "compares stored predictions on the test split", "class-diff": "compares stored predictions on the "
               "test split", "probes": "fits on the training split and reports on the test split, in one pass",
               "delete-blocks": "evaluates the model's own head on the test split"}
        for name, default in NOT_APPLICABLE.get(self.kind, {}).items():
            if getattr(self, name) != default:
                raise _bad(name, f"{self.kind} {why[self.kind]}, so {name} does not apply", f"leave {name} out")
        self._check_options()
        vf = self.options.get("validation_fraction")
        if vf is not None and not 0 < vf < 1:
            raise _bad("options.validation_fraction", f"{vf} is not strictly between 0 and 1",
                       "hold out a share such as 0.1 of the training split")
        if self.labels is not None:
            wanted = 2 if self.kind in SIDE_KINDS else len(self.refs)
            if not isinstance(self.labels, tuple) or len(self.labels) != wanted:
                raise _bad("labels", f"{short_repr(self.labels)} is not {wanted} label(s), one per "
                           f"{'side' if self.kind in SIDE_KINDS else 'model'}", "give one label (or null) each, in order")
            for i, lab in enumerate(self.labels):
                if lab is not None:
                    _text(f"labels[{i}]", lab, MAX_LABEL_CHARS)
        if self.fmt not in FIGURE_FORMATS:
            raise _bad("fmt", f"figure format {short_repr(self.fmt)} is unknown", f"choose one of {', '.join(FIGURE_FORMATS)}")

    def _check_refs(self) -> None:
        if not isinstance(self.refs, tuple) or not all(isinstance(r, str) for r in self.refs):
            raise _bad("refs", f"{short_repr(self.refs)} is not a list of references", "give model references as strings")
        n = len(self.refs)
        want = {"cka": (1, 1), "blocks": (1, 1), "probes": (1, 1), "delete-blocks": (1, 1),
                "cross-cka": (2, MAX_MODELS), "compare": (2, MAX_MODELS)}.get(self.kind, (2, 2))
        if not want[0] <= n <= want[1]:
            what = "side specs" if self.kind in SIDE_KINDS else "model references"
            count = str(want[0]) if want[0] == want[1] else f"{want[0]} to {want[1]}"
            raise _bad("refs", f"{self.kind} takes {count} {what}, got {n}", f"give {count} {what}")
        for i, r in enumerate(self.refs):
            _text(f"refs[{i}]", r, MAX_REF_CHARS)

    def _check_options(self) -> None:
        if not isinstance(self.options, dict):
            raise _bad("options", f"{short_repr(self.options)} is not an object", "give kind-specific settings as an object")
        spec = OPTION_SPECS[self.kind]
        for name, v in self.options.items():
            if name not in spec:
                allowed = ", ".join(spec) or "none"
                raise _bad(f"options.{name}", f"{self.kind} has no option {short_repr(name)}", f"its options are: {allowed}")
            rule = spec[name]
            where = f"options.{name}"
            if rule[0] == "measures":
                self._check_measures(where, v, rule[1], rule[2])
            elif rule[0] is bool:
                if not isinstance(v, bool):
                    raise _bad(where, f"{short_repr(v)} is not true or false", "give true or false")
            elif rule[0] is list:
                numbers = isinstance(v, (list, tuple)) and 0 < len(v) <= rule[3] and all(
                    (_is_int(x) or isinstance(x, float)) and math.isfinite(x) and rule[1] <= x <= rule[2] for x in v)
                if not numbers:
                    raise _bad(where, f"{short_repr(v)} is not a list of 1 to {rule[3]} numbers in [{rule[1]:g}, {rule[2]:g}]",
                               f"give 1 to {rule[3]} finite numbers from {rule[1]:g} to {rule[2]:g}")
            elif rule[0] is Path:
                if v not in rule[1]:
                    _text(where, v, MAX_REF_CHARS)  # a file on this machine (from_json refuses it for the service)
            elif rule[0] is str:
                if v not in rule[1]:
                    raise _bad(where, f"{short_repr(v)} is not allowed", f"choose one of {', '.join(rule[1])}")
            elif rule[0] is int:
                _int(where, v, rule[1], rule[2], f"give a whole number from {rule[1]} to {rule[2]}")
            else:
                ok = (_is_int(v) or isinstance(v, float)) and math.isfinite(v) and rule[1] <= v <= rule[2]
                if not ok:
                    raise _bad(where, f"{short_repr(v)} is not a number in [{rule[1]}, {rule[2]}]",
                               f"give a finite number from {rule[1]} to {rule[2]}")

    @staticmethod
    def _check_measures(where: str, v: Any, low: int, high: int) -> None:
        """A list of ``low`` to ``high`` measure keys (``rsa``, ``rbf-cka(frac=0.5)``), each a known measure with
        parameters in range, none twice."""
        if not isinstance(v, (list, tuple)) or not low <= len(v) <= high or not all(isinstance(k, str) for k in v):
            raise _bad(where, f"{short_repr(v)} is not a list of {low} to {high} measure names",
                       f"give measures such as ['rsa', 'rbf-cka(frac=0.5)'] ({', '.join(measure_names())})")
        keys = []
        for i, text in enumerate(v):
            _text(f"{where}[{i}]", text, MAX_GLOB_CHARS)
            try:
                keys.append(measure_from_key(text).key)
            except MeasureError as e:
                raise _bad(f"{where}[{i}]", str(e), "see `hubcompare measures` (api/measures) for names and ranges") from None
        if len(set(keys)) != len(keys):
            raise _bad(where, f"{short_repr(v)} names a measure twice", "name each measure (with its parameters) once")

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
        for name, rule in OPTION_SPECS[req.kind].items():
            v = req.options.get(name)
            if rule[0] is Path and v is not None and v not in rule[1] and not allow_paths:
                raise _bad(f"options.{name}", f"{short_repr(v)} names a file on the server",
                           f"choose one of {', '.join(rule[1])}")
        return req

    def _check_reference(self, where: str, ref: str, allow_paths: bool) -> None:
        """A model reference (or, for population kinds, a side spec) that parses; a path on this machine only when
        ``allow_paths``."""
        if self.kind in SIDE_KINDS:
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


# --- what a kind's prepare takes and returns (here, not in run.py, which imports the kinds) -----------------
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class Context:
    """Where a kind's ``prepare`` finds models, data and devices (the arguments of :func:`.run.run_request`)."""

    data_dir: str | Path | None = None
    max_params: int = DEFAULT_MAX_PARAMS
    device: Any = "auto"
    cache_dir: str | Path | None = None
    registry: Any = None
    api: Any = None
    on_progress: Progress = lambda stage, done, total: None


@dataclass
class Prepared:
    """What ``prepare`` found: the key's inputs, a title for lists, the references compared (for "comparisons a
    model appears in"), the dataset's name, notices to print (e.g. offline), and the kind's own state for compute."""

    key_inputs: dict
    title: str
    models: list[str]
    dataset: str
    notices: list[str] = field(default_factory=list)
    state: Any = None
