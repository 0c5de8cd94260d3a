"""The grid file: one recipe plus axes, expanded into one validated recipe per point. No printing.

A grid file (YAML)::

    population: digits-zoo          # the population's name (its folder, and its Hub tag when pushed)
    recipe: digits                  # a bundled recipe name or a YAML path (relative to this file first)
    overrides: {train.epochs: 6}    # optional: dotted recipe keys applied to every run
    axes:                           # lists; the grid is their product
      depth: [8, 14]                # depth, width, fraction, dataset, seed, or any dotted recipe key
      width: [1, 2]
      seed: [0, 1]
    out: runs/digits-zoo            # optional (default runs/POPULATION, relative to the current folder)

Each point's run is named as the Hub names population members (``DATASET-dDEPTH-wWIDTH-fFRACTION-sSEED``,
plus ``-KEYVALUE`` per other axis); two points with the same name are refused. Running a grid is
:mod:`hubcompare.training.grid`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from ..data.datasets import parse_fraction
from ..errors import GridSpecError, HubcompareError
from .recipes import RECIPE_DIR, SCHEMA, Recipe, find_recipe, load_recipe

__all__ = ["GridSpec", "GridPoint", "load_grid", "parse_grid", "find_grid", "run_name", "AXIS_ALIASES", "GRID_DIR"]

GRID_DIR = RECIPE_DIR / "grids"  # bundled example grids (package data)
AXIS_ALIASES = {"depth": "model.depth", "width": "model.width", "fraction": "data.fraction", "data_fraction": "data.fraction",
                "dataset": "data.dataset", "seed": "train.seed"}
NAMED_KEYS = ("data.dataset", "model.depth", "model.width", "data.fraction", "train.seed")  # always in a run's name
TOP_KEYS = ("population", "description", "recipe", "overrides", "axes", "out")
MAX_POINTS = 10_000


@dataclass(frozen=True)
class GridPoint:
    name: str  # the run's folder name
    values: dict[str, Any]  # dotted axis key -> this point's value
    recipe: Recipe


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
    """Read and validate a grid file; ``out`` replaces its population folder."""
    path = find_grid(name_or_path)
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
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
    n = math.prod(len(v) for v in axes.values())
    if n > MAX_POINTS:
        raise GridSpecError(f"{where}: the axes make {n:,} runs, more than {MAX_POINTS:,}: split the grid", params=("grid",))
    recipe_path = (base_dir / recipe_name) if base_dir is not None and (base_dir / recipe_name).is_file() else find_recipe(recipe_name)
    base = load_recipe(recipe_path, {k: _int_width(k, v) for k, v in over.items()})
    points, seen = [], {}
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
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
        points.append(GridPoint(name, values, recipe))
    out_dir = Path(out if out is not None else raw.get("out") or Path("runs") / population).expanduser()
    return GridSpec(population=population, out=out_dir, recipe=recipe_name, overrides=over, axes=axes, points=points,
                    source=source, description=str(raw.get("description", "")))


def _int_width(key: str, value: Any) -> Any:
    return int(value) if key == "model.width" and isinstance(value, float) and value.is_integer() else value


def run_name(recipe: Recipe, extra_keys: list[str] = ()) -> str:
    """``DATASET-dDEPTH-wWIDTH-fFRACTION-sSEED`` (as population repos are named), then ``-KEYVALUE`` per extra axis."""
    m, d = recipe["model"], recipe["data"]
    name = f"{d['dataset']}-d{m['depth']}-w{m['width']:g}-f{parse_fraction(d['fraction']):g}-s{recipe['train']['seed']}"
    for key in extra_keys:
        section, _, k = key.partition(".")
        v = recipe[section][k]
        name += f"-{k.replace('_', '')}{v:g}" if isinstance(v, float) else f"-{k.replace('_', '')}{v}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
