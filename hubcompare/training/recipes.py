"""Training recipes: YAML files with four sections (model, data, augment, train), plus overrides.

A recipe is resolved once (file + command-line overrides), validated, and hashed; the resolved
dict and its hash go into the checkpoint so a run can be reproduced exactly.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..bundled import bundled_dir
from ..data.datasets import DATASETS, parse_fraction
from ..errors import RecipeError
from ..models.resnet import BN_EPS, BN_MOMENTUM, INITS, check_architecture

__all__ = ["Recipe", "load_recipe", "find_recipe", "RECIPE_DIR"]

RECIPE_DIR = bundled_dir("recipes")  # the repository's recipes/ folder, shipped as package data

# section -> key -> (type, default); a None default means required
SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "model": {
        "depth": (int, None),
        "width": ((int, float), None),
        "init": (str, "keras"),  # keras: he_normal + zero biases (the authors'); torch: PyTorch's default init
        "bn_momentum": ((int, float), BN_MOMENTUM),  # PyTorch convention (Keras 0.99 = 0.01)
        "bn_eps": ((int, float), BN_EPS),
    },
    "data": {
        "dataset": (str, None),
        "fraction": ((int, float, str), 1),
        "shuffle_labels": ((int, float), 0),  # share of training labels permuted (seeded by train.seed): a control
    },
    "augment": {
        "pad": (int, 0),
        "pad_mode": (str, "reflect"),
        "flip": (bool, False),
        "offsets": (str, "example"),  # example: each image its own crop offset; batch: one offset per batch
    },
    "train": {
        "epochs": (int, None),
        "batch_size": (int, None),
        "lr": ((int, float), None),
        "momentum": ((int, float), 0.9),
        "nesterov": (bool, False),
        "weight_decay": ((int, float), 0.0),
        "weight_decay_on": (str, "kernels"),  # kernels: conv/dense weights only (the authors'); all: every parameter
        "warmup_epochs": (int, 0),
        "schedule": (str, "cosine"),
        "lr_update": (str, "epoch"),  # epoch: one lr per epoch (the authors' Keras callback); step: every step
        "seed": (int, 0),
        "eval_batch_size": (int, 500),
        "precision": (str, "fp32"),
    },
}
SEED_MAX = 2**63 - 1
POSITIVE = ("epochs", "batch_size", "eval_batch_size")  # an override below 1 is refused as the override, not the file
SCHEDULES = ("cosine", "constant")
LR_UPDATES = ("epoch", "step")
PAD_MODES = ("reflect", "constant", "replicate")
CROP_OFFSETS = ("example", "batch")
PRECISIONS = ("fp32", "bf16", "auto")
DECAY_TARGETS = ("kernels", "all")
# recipe keys added after checkpoints were published: left out of the hash while at their default, so
# existing recipe hashes (and resumable runs) stay valid
LATER_KEYS = (
    ("model", "init"), ("model", "bn_momentum"), ("model", "bn_eps"), ("train", "weight_decay_on"), ("train", "lr_update"),
    ("augment", "offsets"), ("data", "shuffle_labels"),
)


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``sections`` holds model/data/augment/train dicts with every key filled."""

    name: str
    description: str
    sections: dict[str, dict[str, Any]]
    source: str = ""
    notes: tuple[str, ...] = ()  # what the overrides changed beyond what they name (a warm-up shortened to fit the epochs)

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.sections[section]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, **copy.deepcopy(self.sections)}

    @property
    def hash(self) -> str:
        """sha256 (16 hex digits) of the resolved recipe: same hash, same training run."""
        d = self.to_dict()
        for section, key in LATER_KEYS:  # keys added later hash as before at their default
            if d[section].get(key) == SCHEMA[section][key][1]:
                del d[section][key]
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Recipe":
        """Apply ``{"model.depth": 56, "train.seed": 3, ...}`` (None values are ignored)."""
        raw, notes = self.to_dict(), list(self.notes)
        given = {k: v for k, v in overrides.items() if v is not None}
        for dotted, value in given.items():
            section, _, key = dotted.partition(".")
            if section not in SCHEMA or key not in SCHEMA[section]:
                raise RecipeError(f"unknown recipe override {dotted!r}")
            if key in POSITIVE and isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise RecipeError(f"{key} = {value}: give a whole number >= 1", params=(key,))
            raw[section][key] = value
        t = raw["train"]
        epochs, warmup = t.get("epochs"), t.get("warmup_epochs")
        if ("train.epochs" in given and "train.warmup_epochs" not in given and isinstance(epochs, int)
                and isinstance(warmup, int) and 0 < epochs <= warmup):
            t["warmup_epochs"] = epochs // 2  # at most half of a run this short warms up
            notes.append(f"{epochs} epoch{'s' * (epochs != 1)} asked for, and the recipe warms up for {warmup}: warm-up "
                         f"shortened to {t['warmup_epochs']} epoch{'s' * (t['warmup_epochs'] != 1)} (recorded as "
                         "train.warmup_epochs in the run's recipe)")
        recipe = _validate(raw, self.source)
        return Recipe(recipe.name, recipe.description, recipe.sections, recipe.source, tuple(notes))


def find_recipe(name_or_path: str | Path) -> Path | Traversable:
    """A path to a YAML file, the name of a bundled recipe (``digits``, ``digits-blocks``, ``cifar10``), or the
    name of a YAML file in ``./recipes/`` (where users keep their own)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    for candidate in (RECIPE_DIR / f"{name_or_path}.yaml", Path.cwd() / "recipes" / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    bundled = sorted(q.name.removesuffix(".yaml") for q in RECIPE_DIR.iterdir() if q.name.endswith(".yaml"))
    names = ", ".join(bundled) or "(none bundled)"
    if p.suffix.lower() in (".yaml", ".yml") or len(p.parts) > 1:  # meant as a file
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise RecipeError(f"recipe file {str(name_or_path)} not found: {p.resolve()} {what}; check the path, or name a "
                          f"bundled recipe ({names}).")
    close = difflib.get_close_matches(str(name_or_path), bundled, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise RecipeError(f"recipe {str(name_or_path)!r} not found{hint}: give a recipe file (.yaml) or a bundled recipe "
                      f"name ({names}).")


def load_recipe(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> Recipe:
    path = find_recipe(name_or_path)
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}): save it as UTF-8.") from None
    except OSError as e:
        raise RecipeError(f"cannot read the recipe {path} ({e.strerror or e}).") from None
    recipe = _validate(raw, str(path))
    return recipe.with_overrides(overrides) if overrides else recipe


def _validate(raw: Any, source: str) -> Recipe:
    where = source or "recipe"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping with sections {list(SCHEMA)}")
    unknown = set(raw) - set(SCHEMA) - {"name", "description"}
    if unknown:
        raise RecipeError(f"{where}: unknown top-level key(s) {sorted(unknown)}; allowed: name, description, {', '.join(SCHEMA)}")
    sections: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise RecipeError(f"{where}: section '{section}' must be a mapping")
        bad = set(given) - set(keys)
        if bad:
            raise RecipeError(f"{where}: unknown key(s) {sorted(bad)} in '{section}'; allowed: {', '.join(keys)}")
        out = {}
        for key, (typ, default) in keys.items():
            value = given.get(key, default)
            if value is None:
                raise RecipeError(f"{where}: '{section}.{key}' is required")
            if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
                raise RecipeError(f"{where}: '{section}.{key}' = {value!r} should be {getattr(typ, '__name__', typ)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise RecipeError(f"{where}: '{section}.{key}' = {value!r} should be a finite number")
            out[key] = value
        sections[section] = out
    m = sections["model"]
    check_architecture(m["depth"], m["width"])
    if m["init"] not in INITS:
        raise RecipeError(f"{where}: 'model.init' must be one of {INITS}")
    if not (0 < m["bn_momentum"] <= 1 and m["bn_eps"] > 0):
        raise RecipeError(f"{where}: need 0 < model.bn_momentum <= 1 (PyTorch convention; Keras 0.99 = 0.01) and model.bn_eps > 0")
    if sections["data"]["dataset"] not in DATASETS:
        raise RecipeError(f"{where}: unknown dataset {sections['data']['dataset']!r}; choose one of {', '.join(DATASETS)}")
    parse_fraction(sections["data"]["fraction"])
    if not 0 <= sections["data"]["shuffle_labels"] <= 1:
        raise RecipeError(f"{where}: 'data.shuffle_labels' = {sections['data']['shuffle_labels']!r} must be in [0, 1] "
                          "(the share of training labels to permute: 0 = none, 1 = all)")
    t = sections["train"]
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if t[key] < 1:
            raise RecipeError(f"{where}: 'train.{key}' must be >= 1")
    if t["batch_size"] < 2:
        raise RecipeError(f"{where}: 'train.batch_size' must be >= 2 (batch norm needs more than one example)")
    if not 0 <= t["seed"] <= SEED_MAX:
        raise RecipeError(f"{where}: 'train.seed' = {t['seed']} must be in [0, 2**63 - 1] (torch seeds are 64-bit)")
    if not 0 <= t["warmup_epochs"] < t["epochs"]:
        raise RecipeError(f"{where}: 'train.warmup_epochs' = {t['warmup_epochs']} must be in [0, epochs = {t['epochs']}): "
                          "give more epochs, or fewer warm-up epochs in the recipe")
    if t["schedule"] not in SCHEDULES:
        raise RecipeError(f"{where}: 'train.schedule' must be one of {SCHEDULES}")
    if t["lr_update"] not in LR_UPDATES:
        raise RecipeError(f"{where}: 'train.lr_update' must be one of {LR_UPDATES} (how often the schedule sets the lr)")
    if t["lr"] <= 0 or t["weight_decay"] < 0 or not 0 <= t["momentum"] < 1:
        raise RecipeError(f"{where}: need lr > 0, weight_decay >= 0 and 0 <= momentum < 1")
    if t["weight_decay_on"] not in DECAY_TARGETS:
        raise RecipeError(f"{where}: 'train.weight_decay_on' must be one of {DECAY_TARGETS}")
    if t["precision"] not in PRECISIONS:
        raise RecipeError(f"{where}: 'train.precision' must be one of {PRECISIONS} (auto: bf16 autocast where the CPU or GPU has native bf16, fp16 with loss scaling on older GPUs, else fp32)")
    if sections["augment"]["pad_mode"] not in PAD_MODES or sections["augment"]["pad"] < 0:
        raise RecipeError(f"{where}: 'augment.pad' must be >= 0 and 'augment.pad_mode' one of {PAD_MODES}")
    if sections["augment"]["offsets"] not in CROP_OFFSETS:
        raise RecipeError(f"{where}: 'augment.offsets' must be one of {CROP_OFFSETS} (a crop offset per image or one per batch)")
    return Recipe(name=str(raw.get("name", Path(source).stem if source else "recipe")),
                  description=str(raw.get("description", "")), sections=sections, source=source)
