"""What a comparison kind is, declared once where the kind lives: a typed :class:`KindSpec` and its typed options.

A kind module (``cka_kinds.py``, ...) gives each kind object a ``spec``; :mod:`.kinds` lists the kind modules. From a
spec come the request checks (:class:`~.requests.ComparisonRequest`: arity, side specs or models, fields that do not
apply, every option's type and range), the service's checks and form (sized, layer globs, server caps), the API's JSON
schema (:meth:`KindSpec.request_schema`) and the CLI's reading of results (files by role, :meth:`KindSpec.path`).
This module is a leaf: it imports no torch and no kind, so anything may read a spec.
"""

from __future__ import annotations

import fnmatch
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from ..errors import InvalidRequestError, short_repr
from ..models.checkpoint import DEFAULT_MAX_PARAMS

__all__ = ["MAX_EXAMPLES", "MAX_MODELS", "BoolOption", "ChoiceOption", "Context", "FileOption", "FloatOption", "Heatmaps",
           "IntOption", "Kind", "KindSpec", "NumbersOption", "Option", "Prepared", "Progress", "bad_field"]

MAX_MODELS = 32  # models in one pass (cross-cka, compare)
MAX_EXAMPLES = 10_000_000  # examples a request may name

# request field -> the library parameter a front end maps to its own option (HubcompareError.params)
_PARAM = {"examples": "num_examples", "fmt": "format", "batch_size": "batch_size", "passes": "passes", "layers": "layers",
          "dataset": "dataset", "seed": "seed", "split": "split"}


def bad_field(name: str, problem: str, fix: str) -> InvalidRequestError:
    """The typed refusal of one request field: ``NAME: problem; fix`` (``options.X`` for an option)."""
    param = _PARAM.get(name.split(".")[-1] if name.startswith("options.") else name, name.split(".")[-1])
    return InvalidRequestError(f"{name}: {problem}; {fix}", name, params=(param,))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


# --- options: each one typed, with its range, its JSON schema and the values it refuses ---------------------------
@dataclass(frozen=True, kw_only=True)
class Option(ABC):
    """A kind-specific setting. ``doc``: one line for the API and the docs. ``server_cap``: on the service, at most
    ``"examples"`` (the server's examples cap) or this many. ``server_required``: the service needs it given.
    ``in_key``: whether it changes the numbers (False: a guard such as a memory budget, never in the result key)."""

    name: str
    doc: str
    server_cap: str | int | None = None
    server_required: bool = False
    in_key: bool = True

    @abstractmethod
    def check(self, where: str, v: Any) -> None:
        """Refuse ``v`` with a typed error naming ``where`` (``options.NAME``) unless the option takes it."""

    @abstractmethod
    def schema(self) -> dict:
        """The option's JSON schema (type, range or choices, description)."""

    def hostile(self) -> list:
        """Values :meth:`check` must refuse (for the contract test over every registered kind)."""
        return [None, "1e3", [1, 2], {"a": 1}]

    @abstractmethod
    def example(self) -> Any:
        """A value :meth:`check` takes (the API schema's example)."""

    def names_a_file(self, v: Any) -> bool:
        return False


@dataclass(frozen=True, kw_only=True)
class IntOption(Option):
    low: int
    high: int

    def check(self, where: str, v: Any) -> None:
        if not _is_int(v):
            raise bad_field(where, f"{short_repr(v)} is not a whole number", f"give a whole number from {self.low} to {self.high}")
        if not self.low <= v <= self.high:
            raise bad_field(where, f"{v} is out of range", f"give a whole number from {self.low} to {self.high}")

    def schema(self) -> dict:
        return {"type": "integer", "minimum": self.low, "maximum": self.high, "description": self.doc}

    def hostile(self) -> list:
        return super().hostile() + [self.low - 1, self.high + 1, True, float(self.low) + 0.5]

    def example(self) -> int:
        return self.low


@dataclass(frozen=True, kw_only=True)
class FloatOption(Option):
    """A finite number in [low, high]; ``open``: strictly inside (low, high)."""

    low: float
    high: float
    open: bool = False

    def check(self, where: str, v: Any) -> None:
        inside = _is_number(v) and (self.low < v < self.high if self.open else self.low <= v <= self.high)
        if not inside:
            span = f"({self.low:g}, {self.high:g})" if self.open else f"[{self.low:g}, {self.high:g}]"
            raise bad_field(where, f"{short_repr(v)} is not a number in {span}",
                            f"give a finite number {'strictly ' if self.open else ''}from {self.low:g} to {self.high:g}")

    def schema(self) -> dict:
        bounds = ({"exclusiveMinimum": self.low, "exclusiveMaximum": self.high} if self.open
                  else {"minimum": self.low, "maximum": self.high})
        return {"type": "number", **bounds, "description": self.doc}

    def hostile(self) -> list:
        edges = [self.low, self.high] if self.open else [self.low - abs(self.low) - 1, self.high + abs(self.high) + 1]
        return super().hostile() + edges + [True, float("nan"), float("inf")]

    def example(self) -> float:
        return (self.low + self.high) / 2 if self.open else self.low


@dataclass(frozen=True, kw_only=True)
class BoolOption(Option):
    def check(self, where: str, v: Any) -> None:
        if not isinstance(v, bool):
            raise bad_field(where, f"{short_repr(v)} is not true or false", "give true or false")

    def schema(self) -> dict:
        return {"type": "boolean", "description": self.doc}

    def hostile(self) -> list:
        return super().hostile() + [0, 1, "true"]

    def example(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class ChoiceOption(Option):
    choices: tuple[str, ...]

    def check(self, where: str, v: Any) -> None:
        if not isinstance(v, str) or v not in self.choices:
            raise bad_field(where, f"{short_repr(v)} is not allowed", f"choose one of {', '.join(self.choices)}")

    def schema(self) -> dict:
        return {"type": "string", "enum": list(self.choices), "description": self.doc}

    def hostile(self) -> list:
        return super().hostile() + ["", self.choices[0].upper() + "x", 1]

    def example(self) -> str:
        return self.choices[0]


@dataclass(frozen=True, kw_only=True)
class NumbersOption(Option):
    """A list of 1 to ``max_len`` finite numbers in [low, high] (an L2 grid, say)."""

    low: float
    high: float
    max_len: int

    def check(self, where: str, v: Any) -> None:
        ok = isinstance(v, (list, tuple)) and 0 < len(v) <= self.max_len and all(
            _is_number(x) and self.low <= x <= self.high for x in v)
        if not ok:
            raise bad_field(where, f"{short_repr(v)} is not a list of 1 to {self.max_len} numbers in "
                            f"[{self.low:g}, {self.high:g}]", f"give 1 to {self.max_len} finite numbers from "
                            f"{self.low:g} to {self.high:g}")

    def schema(self) -> dict:
        return {"type": "array", "minItems": 1, "maxItems": self.max_len, "description": self.doc,
                "items": {"type": "number", "minimum": self.low, "maximum": self.high}}

    def hostile(self) -> list:
        return [None, "1e3", {"a": 1}, [], [self.low / 2 if self.low > 0 else -1.0], [1.0] * (self.max_len + 1), ["1"], 1.0,
                [float("nan")], [True]]

    def example(self) -> list:
        return [self.low]


@dataclass(frozen=True, kw_only=True)
class FileOption(Option):
    """One of ``choices`` or, on this machine only, a file's path (the service refuses a path: :meth:`names_a_file`)."""

    choices: tuple[str, ...]
    max_chars: int = 1000

    def check(self, where: str, v: Any) -> None:
        if v in self.choices:
            return
        if not isinstance(v, str) or not v.strip() or len(v) > self.max_chars or any(ord(c) < 32 or c == "\x7f" for c in v):
            raise bad_field(where, f"{short_repr(v)} is not one of {', '.join(self.choices)} or a file's path",
                            f"give {' or '.join(self.choices)}, or a file on this machine")

    def names_a_file(self, v: Any) -> bool:
        return v is not None and v not in self.choices

    def schema(self) -> dict:
        return {"type": "string", "enum": list(self.choices), "description": self.doc + " (the service takes no paths)"}

    def hostile(self) -> list:
        return [None, 1, "", "a\x00b", ["auto"]]

    def example(self) -> str:
        return self.choices[0]


# --- what a kind's prepare takes and returns --------------------------------------------------------------------
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


# --- the kind ---------------------------------------------------------------------------------------------------------
FormOptions = Callable[[Mapping[str, str], dict], dict]  # (the form's fields, the request so far) -> options


@dataclass(frozen=True)
class Heatmaps:
    """Where a kind's results keep the layer-by-layer matrices a result page draws as heatmaps: each JSON file in
    ``role`` is one (the matrix under ``key`` of it, or the document itself, with ``layers_a`` / ``layers_b`` /
    ``cka`` / ``se``), or with ``per_measure`` the ``role`` document holds one per pair and measure (compare's
    ``measures.json``), named ``STEM:MEASURE.json`` on the page. ``within``: one model's layers against its own.
    ``figure_role``: the files that draw the same matrices (the page draws them as SVG instead)."""

    role: str = "document"
    key: str | None = None
    per_measure: bool = False
    within: bool = False
    figure_role: str = "figure"


@dataclass(frozen=True, kw_only=True)
class KindSpec:
    """Everything the front ends need to know of a kind, without running it.

    ``refs``: how many references (min, max); ``sides``: they are side specs (population:NAME, A+B, ...), not models.
    ``estimator``: minibatches feed the unbiased HSIC estimator (batch and examples >= its minimum). ``sized``: a pass
    over examples (the service requires ``examples`` and caps it). ``layers``: layer globs apply. ``fixed``: request
    fields that do not apply, with the value they must keep, and ``fixed_why`` (why). ``options``: the kind's typed
    settings. ``files``: role -> file name glob of what it writes (``{fmt}``: the figure format; ``document``: the
    JSON a reader parses, one per pair where there are several). ``heatmaps``: which of them a result page draws
    (:class:`Heatmaps`; None: no layer-by-layer matrix). ``tables``: fields of the document that hold rows a result
    page shows as paged tables (``blocks``, ``classes``). ``form_options``: the options a compare form's fields give.
    ``many_sides_kind``: the kind a request of this kind becomes when a reference names many models (cross-cka ->
    across-seeds, as the CLI and the service both do)."""

    name: str
    summary: str
    refs: tuple[int, int]
    sides: bool = False
    estimator: bool = False
    sized: bool = False
    layers: bool = True
    fixed: Mapping[str, Any] = field(default_factory=dict)
    fixed_why: str = ""
    options: tuple[Option, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    heatmaps: Heatmaps | None = None
    tables: tuple[str, ...] = ()
    form_options: FormOptions | None = None
    many_sides_kind: str | None = None

    @property
    def one_model(self) -> bool:
        return self.refs == (1, 1)

    @property
    def what_refs(self) -> str:
        return "side specs" if self.sides else "model references"

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def check_options(self, options: Any) -> None:
        """Every option known to the kind and of its type and range (``options.NAME`` names a bad one)."""
        if not isinstance(options, dict):
            raise bad_field("options", f"{short_repr(options)} is not an object", "give kind-specific settings as an object")
        for name, v in options.items():
            opt = self.option(name)
            if opt is None:
                allowed = ", ".join(o.name for o in self.options) or "none"
                raise bad_field(f"options.{name}", f"{self.name} has no option {short_repr(name)}", f"its options are: {allowed}")
            opt.check(f"options.{name}", v)

    def options_schema(self) -> dict:
        return {"type": "object", "additionalProperties": False, "properties": {o.name: o.schema() for o in self.options}}

    def to_json(self) -> dict:
        """The spec as the API lists it (``GET /api/kinds``)."""
        return {"name": self.name, "summary": self.summary, "refs": {"min": self.refs[0], "max": self.refs[1],
                "of": "sides" if self.sides else "models"}, "sized": self.sized, "layers": self.layers,
                "fixed": dict(self.fixed), "options": self.options_schema()["properties"], "files": dict(self.files)}

    # --- its files, by role ------------------------------------------------------------------------------------
    def pattern(self, role: str, fmt: str = "png") -> str:
        try:
            return self.files[role].replace("{fmt}", fmt)
        except KeyError:
            raise KeyError(f"{self.name} writes no {role!r} file (its roles: {', '.join(self.files)})") from None

    def paths(self, paths: Sequence[str | Path], role: str, fmt: str = "png") -> list:
        """The files among ``paths`` (what export wrote, or a stored result's names) that play ``role``, in their
        order, as given."""
        glob = self.pattern(role, fmt)
        return [p for p in paths if fnmatch.fnmatchcase(Path(p).name, glob)]

    def path(self, paths: Sequence[Path], role: str, fmt: str = "png") -> Path:
        """The one file among ``paths`` that plays ``role`` (a kind that writes several: the first)."""
        found = self.paths(paths, role, fmt)
        if not found:
            raise KeyError(f"no {role} file ({self.pattern(role, fmt)}) among {[Path(p).name for p in paths]}")
        return found[0]

    def role_of(self, name: str, fmt: str = "png") -> str | None:
        """The role of a file named ``name``, or None when the kind writes no such file."""
        return next((r for r in self.files if fnmatch.fnmatchcase(name, self.pattern(r, fmt))), None)


class Kind(Protocol):
    """A registered comparison kind: its :class:`KindSpec` and the three steps :func:`.run.run_request` calls."""

    spec: KindSpec

    @property
    def name(self) -> str: ...

    def prepare(self, req: Any, ctx: Context) -> Prepared: ...

    def compute(self, req: Any, prepared: Prepared, staging: Path, on_progress: Progress,
                compare: Callable | None) -> tuple[dict, list[str]]: ...

    def export(self, stored: Any, req: Any, out_dir: Path) -> list[Path]: ...
