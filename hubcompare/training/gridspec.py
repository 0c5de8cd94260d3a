"""The grid file: one recipe plus axes, expanded into one validated recipe per point. No printing.

A grid file (YAML)::

    population: digits-zoo          # the population's name (its folder, and its Hub tag when pushed)
    recipe: digits                  # a bundled recipe name or a YAML path (relative to this file first)
    overrides: {train.epochs: 6}    # optional: dotted recipe keys applied to every run
    axes:                           # lists; the grid is their product
      depth: [8, 14]                # depth, width, fraction, dataset, seed, or any dotted recipe key
      width: [1, 2]
      seed: [0, 1]
    exclude:                        # optional: points to leave out, each a partial point (every key given must match)
      - {depth: 14, width: 2}
    out: runs/digits-zoo            # optional (default runs/POPULATION): a folder below the current one
    until_fit:                      # optional, the fit rule: a run ending below this train accuracy is
      train_accuracy: 0.99          # trained again from scratch with the next epoch count, until it fits
      epochs: [600, 1200]           # or the list ends (not part of any recipe: the first rung's hash is the recipe's)

Each point's run is named as the Hub names population members (``DATASET-dDEPTH-wWIDTH-fFRACTION-sSEED``,
plus ``-KEYVALUE`` per other axis); two points with the same name are refused. Running a grid is
:mod:`hubcompare.training.grid`.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from ..data.datasets import parse_fraction
from ..errors import GridSpecError, HubcompareError
from .recipes import RECIPE_DIR, SCHEMA, Recipe, find_recipe, load_recipe

__all__ = ["GridSpec", "GridPoint", "FitRule", "load_grid", "parse_grid", "find_grid", "run_name", "AXIS_ALIASES", "GRID_DIR"]

GRID_DIR = RECIPE_DIR / "grids"  # bundled example grids (package data)
AXIS_ALIASES = {"depth": "model.depth", "width": "model.width", "fraction": "data.fraction", "data_fraction": "data.fraction",
                "dataset": "data.dataset", "seed": "train.seed"}
NAMED_KEYS = ("data.dataset", "model.depth", "model.width", "data.fraction", "train.seed")  # always in a run's name
TOP_KEYS = ("population", "description", "recipe", "overrides", "axes", "exclude", "out", "until_fit")
MAX_POINTS = 10_000
MAX_GRID_BYTES = 1 << 20  # a grid file is a few lines; anything near this is not one
MAX_ALIASES = 256  # YAML aliases (*name) in one grid file
MAX_NODES = 1_000_000  # YAML nodes once every alias is expanded (a list of 10,000 points' values fits many times)
MAX_DEPTH = 32  # nested lists/mappings (a grid file needs 3)


class _Refused(yaml.YAMLError):
    """A grid file the loader refuses (the message names the fix)."""


class GridLoader(yaml.SafeLoader):
    """yaml's SafeLoader, refusing what a grid file never needs: a key given twice in one mapping, more than
    ``MAX_ALIASES`` aliases, an alias that contains itself, aliases expanding to more than ``MAX_NODES`` nodes
    (a "billion laughs" file is a few hundred bytes), or values nested more than ``MAX_DEPTH`` deep."""

    def __init__(self, stream):
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent, index):
        if self.depth >= MAX_DEPTH:
            raise _Refused(f"values nested more than {MAX_DEPTH} deep (line {self.peek_event().start_mark.line + 1}): a grid "
                           "file needs a few levels")
        self.depth += 1
        try:
            return self._compose_node(parent, index)
        finally:
            self.depth -= 1

    def _compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _Refused(f"more than {MAX_ALIASES} YAML aliases (*name; the last on line {mark.line + 1}): write the "
                               "values out")
        return super().compose_node(parent, index)

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # SafeLoader reports an unhashable key itself
                if key in first:
                    raise _Refused(f"key {key!r} is given twice (lines {first[key] + 1} and {key_node.start_mark.line + 1}): "
                                   "keep one (a later one would silently replace the earlier)")
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> int:
    """Nodes in ``root`` with every alias expanded, without expanding them (each shared node is sized once)."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in busy:
            raise _Refused(f"the alias on line {node.start_mark.line + 1} contains itself: a grid file holds no recursive "
                           "values")
        busy.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        busy.discard(id(node))
        if n > MAX_NODES:
            raise _Refused(f"the value on line {node.start_mark.line + 1} expands to more than {MAX_NODES:,} YAML nodes "
                           "(aliases repeating aliases): write the grid out plainly")
        sizes[id(node)] = n
        return n

    return size(root)


@dataclass(frozen=True)
class FitRule:
    """``until_fit``: a run whose last epoch's train accuracy is below ``train_accuracy`` is trained again, from
    scratch, for the next of ``epochs`` (each more than the one before), until it fits or the list ends."""

    train_accuracy: float
    epochs: tuple[int, ...]

    def fits(self, accuracy: Any) -> bool:
        """A missing or unreadable accuracy does not fit (the run is trained again; nothing is lost)."""
        return isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool) and accuracy >= self.train_accuracy

    def describe(self) -> str:
        return (f"a run that does not fit its training set (train accuracy < {self.train_accuracy:g} at its last epoch) is "
                f"trained again from scratch for {', then '.join(map(str, self.epochs))} epochs, until it fits")

    def to_dict(self) -> dict[str, Any]:
        return {"train_accuracy": self.train_accuracy, "epochs": list(self.epochs), "rule": self.describe()}


@dataclass(frozen=True)
class GridPoint:
    name: str  # the run's folder name
    values: dict[str, Any]  # dotted axis key -> this point's value
    recipe: Recipe
    rungs: tuple[Recipe, ...] = ()  # with a fit rule: the recipe, then the same with each longer epoch count

    @property
    def ladder(self) -> tuple[Recipe, ...]:
        """The recipes this run may train, in order (just its recipe without a fit rule)."""
        return self.rungs or (self.recipe,)


@dataclass(frozen=True)
class GridSpec:
    population: str
    out: Path
    recipe: str  # as the grid file names it
    overrides: dict[str, Any]
    axes: dict[str, list]  # dotted key -> values
    points: list[GridPoint]
    source: str = ""
    description: str = ""
    exclude: tuple[dict[str, Any], ...] = ()  # partial points left out (dotted key -> value)
    until_fit: FitRule | None = None


def find_grid(name_or_path: str | Path) -> Path | Traversable:
    """A path to a grid file, or the name of a bundled grid (``digits-zoo``)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    candidate = GRID_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    if p.exists():
        raise GridSpecError(f"grid {str(name_or_path)!r} is a folder: give a grid YAML file.", params=("grid",))
    bundled = sorted(q.name.removesuffix(".yaml") for q in GRID_DIR.iterdir() if q.name.endswith(".yaml")) if GRID_DIR.is_dir() else []
    raise GridSpecError(f"grid file {str(name_or_path)!r} not found: give a YAML path or one of {bundled or '(none bundled)'}.",
                        params=("grid",))


def load_grid(name_or_path: str | Path, out: str | Path | None = None) -> GridSpec:
    """Read and validate a grid file (with :class:`GridLoader`, at most ``MAX_GRID_BYTES``); ``out`` (the command
    line's) replaces its population folder."""
    path = find_grid(name_or_path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_GRID_BYTES + 1)
        if len(data) > MAX_GRID_BYTES:
            raise GridSpecError(f"{path} is over {MAX_GRID_BYTES >> 10} KiB, too large for a grid file (a recipe plus axes): "
                                "give the grid's YAML file", params=("grid",))
        raw = yaml.load(data.decode("utf-8"), Loader=GridLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as e:
        raise GridSpecError(f"{path}: {e}", params=("grid",)) from None
    except yaml.YAMLError as e:
        raise GridSpecError(f"{path} is not valid YAML: {e}", params=("grid",)) from None
    except UnicodeDecodeError as e:
        raise GridSpecError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}): save it as UTF-8.", params=("grid",)) from None
    except OSError as e:
        raise GridSpecError(f"cannot read the grid file {path} ({e.strerror or e}).", params=("grid",)) from None
    base = path.parent if isinstance(path, Path) else None
    return parse_grid(raw, str(path), base_dir=base, out=out, default_population=Path(str(path)).stem)


def _axis_key(key: Any, where: str) -> str:
    dotted = AXIS_ALIASES.get(key, key) if isinstance(key, str) else key
    section, _, name = str(dotted).partition(".")
    if not isinstance(dotted, str) or section not in SCHEMA or name not in SCHEMA[section]:
        raise GridSpecError(f"{where}: unknown axis {key!r}; use {', '.join(AXIS_ALIASES)} or a dotted recipe key such as "
                            "train.lr", params=("grid",))
    return dotted


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) and not (isinstance(v, float) and not math.isfinite(v))


def parse_grid(raw: Any, source: str = "", base_dir: Path | None = None, out: str | Path | None = None,
               default_population: str = "grid") -> GridSpec:
    """Validate a grid mapping (as read from YAML) and expand it into its points, each with a validated recipe."""
    where = source or "grid"
    if not isinstance(raw, dict):
        raise GridSpecError(f"{where}: expected a mapping with keys {', '.join(TOP_KEYS)}", params=("grid",))
    unknown = sorted(map(str, set(raw) - set(TOP_KEYS)))
    if unknown:
        raise GridSpecError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(TOP_KEYS)}", params=("grid",))
    recipe_name = raw.get("recipe")
    if not isinstance(recipe_name, str) or not recipe_name.strip():
        raise GridSpecError(f"{where}: 'recipe' is required: a bundled recipe name or a YAML path", params=("grid",))
    population = raw.get("population", default_population)
    if not isinstance(population, str) or not population or any(c in population for c in "/\\\0") or population in (".", ".."):
        raise GridSpecError(f"{where}: 'population' = {population!r} must be a name (it names the population folder)",
                            params=("grid",))
    overrides = raw.get("overrides") or {}
    axes_raw = raw.get("axes") or {}
    if not isinstance(overrides, dict) or not isinstance(axes_raw, dict):
        raise GridSpecError(f"{where}: 'overrides' and 'axes' must be mappings (dotted recipe key -> value / list of values)",
                            params=("grid",))
    over = {_axis_key(k, where): v for k, v in overrides.items()}
    _check_size(axes_raw, raw.get("exclude"), where)
    axes: dict[str, list] = {}
    for key, values in axes_raw.items():
        dotted = _axis_key(key, where)
        if dotted in axes or dotted in over:
            raise GridSpecError(f"{where}: {dotted!r} is given twice (as an axis and an override, or under two names)",
                                params=("grid",))
        if not isinstance(values, list) or not values or not all(_scalar(v) for v in values):
            raise GridSpecError(f"{where}: axis {key!r} must be a non-empty list of numbers or strings, e.g. [0, 1, 2]",
                                params=("grid",))
        axes[dotted] = values
    exclude = _exclusions(raw.get("exclude"), axes, where)
    fit = _fit_rule(raw.get("until_fit"), where)
    out_dir = _out_dir(out, raw.get("out"), population, where)
    recipe_path = (base_dir / recipe_name) if base_dir is not None and (base_dir / recipe_name).is_file() else find_recipe(recipe_name)
    base = load_recipe(recipe_path, {k: _int_width(k, v) for k, v in over.items()})
    points, seen = [], {}
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
        if any(all(_same(k, values[k], v) for k, v in rule.items()) for rule in exclude):
            continue
        label = ", ".join(f"{k}={v}" for k, v in values.items()) or "the only run"
        try:
            recipe = base.with_overrides({k: _int_width(k, v) for k, v in values.items()})
        except HubcompareError as e:
            raise GridSpecError(f"{where}: run {label}: {e}", params=("grid",)) from None
        name = run_name(recipe, [k for k in axes if k not in NAMED_KEYS])
        if name in seen:
            raise GridSpecError(f"{where}: runs {seen[name]} and {label} are the same run ({name}): remove the duplicate value",
                                params=("grid",))
        seen[name] = label
        points.append(GridPoint(name, values, recipe, _rungs(recipe, fit, f"{where}: run {label}") if fit else ()))
    if not points:
        raise GridSpecError(f"{where}: 'exclude' leaves no run: remove a rule", params=("grid",))
    return GridSpec(population=population, out=out_dir, recipe=recipe_name, overrides=over, axes=axes, points=points,
                    source=source, description=str(raw.get("description", "")), exclude=tuple(exclude), until_fit=fit)


def _check_size(axes: dict, exclude: Any, where: str) -> None:
    """The grid's size, from the axes' lengths alone: refused before any value is looked at or any point made."""
    n = 1
    for key, values in axes.items():
        n *= len(values) if isinstance(values, list) else 1
        if n > MAX_POINTS:
            raise GridSpecError(f"{where}: the axes make more than {MAX_POINTS:,} runs (at axis {key!r}, {n:,} so far): split "
                                "the grid", params=("grid",))
    if isinstance(exclude, list) and len(exclude) > MAX_POINTS:
        raise GridSpecError(f"{where}: 'exclude' has {len(exclude):,} rules, more than the {MAX_POINTS:,} runs a grid may "
                            "have: exclude with partial points", params=("grid",))


def _out_dir(cli_out: str | Path | None, file_out: Any, population: str, where: str) -> Path:
    """The population folder: the command line's ``out`` (an absolute path is taken as typed), else the grid file's
    ``out:``, else ``runs/POPULATION``. A relative folder must lie below the working folder (``..``, ``/``, ``~`` refused)."""
    if cli_out is not None:
        if Path(cli_out).expanduser().is_absolute():
            return Path(cli_out).expanduser()
        chosen, source = cli_out, "--out"
    elif file_out is not None:
        chosen, source = file_out, "the grid file's 'out'"
    else:
        return Path("runs") / population
    text = str(chosen) if isinstance(chosen, (str, Path)) else None
    norm = os.path.normpath(text) if text and "\0" not in text else ""
    if text is None or not text.strip() or not norm or Path(text).is_absolute() or text.startswith("~") or norm == "." \
            or norm == ".." or norm.startswith(".." + os.sep):
        fix = "an absolute path in --out on the command line" if source != "--out" else "an absolute path"
        raise GridSpecError(f"{where}: {source} = {chosen!r} must be a folder below the working folder (e.g. runs/{population}); "
                            f"for a folder elsewhere give {fix}", params=("out",))
    return Path(norm)


def _fit_rule(raw: Any, where: str) -> FitRule | None:
    """``until_fit: {train_accuracy: 0.99, epochs: [600, 1200]}``."""
    if raw is None:
        return None
    example = "e.g. until_fit: {train_accuracy: 0.99, epochs: [600, 1200]}"
    if not isinstance(raw, dict) or set(raw) != {"train_accuracy", "epochs"}:
        raise GridSpecError(f"{where}: 'until_fit' must be a mapping with exactly the keys train_accuracy and epochs, {example}",
                            params=("grid",))
    acc, epochs = raw["train_accuracy"], raw["epochs"]
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 < acc <= 1:
        raise GridSpecError(f"{where}: until_fit's train_accuracy = {acc!r} must be a number in (0, 1], {example}", params=("grid",))
    if not isinstance(epochs, list) or not epochs or not all(isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in epochs) \
            or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise GridSpecError(f"{where}: until_fit's epochs = {epochs!r} must be a non-empty list of increasing epoch counts, "
                            f"{example}", params=("grid",))
    return FitRule(float(acc), tuple(epochs))


def _rungs(recipe: Recipe, rule: FitRule, where: str) -> tuple[Recipe, ...]:
    first = recipe["train"]["epochs"]
    if rule.epochs[0] <= first:
        raise GridSpecError(f"{where}: until_fit's epochs {list(rule.epochs)} must each be more than the run's {first} epochs",
                            params=("grid",))
    try:
        return (recipe, *(recipe.with_overrides({"train.epochs": e}) for e in rule.epochs))
    except HubcompareError as e:
        raise GridSpecError(f"{where}: {e}", params=("grid",)) from None


def _same(key: str, value: Any, wanted: Any) -> bool:
    """An axis value equals an exclusion's value (fractions compared as numbers: 1/16 == 0.0625)."""
    if key == "data.fraction":
        return parse_fraction(value) == parse_fraction(wanted)
    return value == wanted


def _exclusions(raw: Any, axes: dict[str, list], where: str) -> list[dict[str, Any]]:
    """``exclude``: a list of partial points, each naming only axes, with values those axes take."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(rule, dict) and rule for rule in raw):
        raise GridSpecError(f"{where}: 'exclude' must be a list of mappings, e.g. [{{depth: 110, fraction: 1/16}}]",
                            params=("grid",))
    rules = []
    for rule in raw:
        dotted = {}
        for key, value in rule.items():
            k = _axis_key(key, where)
            if k not in axes:
                raise GridSpecError(f"{where}: exclude names {key!r}, which is not an axis of this grid ({', '.join(axes)})",
                                    params=("grid",))
            if not any(_same(k, v, value) for v in axes[k]):
                raise GridSpecError(f"{where}: exclude gives {key}={value!r}, a value axis {key!r} does not take "
                                    f"({axes[k]})", params=("grid",))
            dotted[k] = value
        rules.append(dotted)
    return rules


def _int_width(key: str, value: Any) -> Any:
    return int(value) if key == "model.width" and isinstance(value, float) and value.is_integer() else value


def run_name(recipe: Recipe, extra_keys: list[str] = ()) -> str:
    """``DATASET-dDEPTH-wWIDTH-fFRACTION-sSEED`` (as population repos are named), then ``-KEYVALUE`` per extra axis."""
    m, d = recipe["model"], recipe["data"]
    name = f"{d['dataset']}-d{m['depth']}-w{m['width']:g}-f{parse_fraction(d['fraction']):g}-s{recipe['train']['seed']}"
    if d["shuffle_labels"] and "data.shuffle_labels" not in extra_keys:  # a control population is named as one
        name += f"-shuffled{d['shuffle_labels']:g}"
    for key in extra_keys:
        section, _, k = key.partition(".")
        v = recipe[section][k]
        name += f"-{k.replace('_', '')}{v:g}" if isinstance(v, float) else f"-{k.replace('_', '')}{v}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
