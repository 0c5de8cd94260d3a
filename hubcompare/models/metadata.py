"""The one typed record of what describes a model: config.json's ``hubcompare`` block.

Cards, the registry, pull/info, comparisons and populations all read a model's depth, width,
dataset, fraction, seed and accuracy from here, so which keys describe a model is written once.
Folders written by plain timm (no ``hubcompare`` block) still give what timm's config says.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import CheckpointCorruptError, short_repr

__all__ = ["ModelMeta", "SUMMARY_KEYS"]

# What identifies a model in a population: the registry's columns, the card's tags, a comparison's provenance.
SUMMARY_KEYS = ("architecture", "depth", "width", "dataset", "data_fraction", "seed", "test_accuracy")


@dataclass
class ModelMeta:
    """config.json's ``hubcompare`` block, typed. Unknown keys are kept in ``extra`` and written back."""

    architecture: str | None = None
    depth: int | None = None
    width: float | None = None
    bn_momentum: float | None = None
    bn_eps: float | None = None
    in_chans: int | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    dataset: str | None = None
    data_fraction: float | None = None
    seed: int | None = None
    epochs: int | None = None
    test_accuracy: float | None = None
    train_accuracy: float | None = None
    train_loss: float | None = None
    train_data: dict | None = None  # ImageDataset.describe() of the training subset
    test_data: dict | None = None  # ImageDataset.describe() of the test split
    recipe: dict | None = None
    recipe_hash: str | None = None
    history: list[dict] | None = None
    wall_time_s: float | None = None
    resumed_at_epochs: list[int] | None = None
    precision: str | None = None
    device: dict | None = None  # what it was trained on (hubcompare.models.devices.describe_device)
    torch_threads: int | None = None
    package_versions: dict | None = None
    created_at: str | None = None
    weights_sha256: str | None = None
    predictions: dict | None = None  # the predictions file's record (sha256, dataset fingerprint, ...)
    populations: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, block: dict) -> ModelMeta:
        """From a ``hubcompare`` block (a card's or a config's); unknown keys go to ``extra``."""
        if not isinstance(block, dict):
            raise CheckpointCorruptError(f"the 'hubcompare' block must be a JSON object, not {_json_type(block)}")
        known = {f.name for f in fields(cls)} - {"extra"}
        meta = cls(**{k: v for k, v in block.items() if k in known})
        meta.extra = {k: v for k, v in block.items() if k not in known}
        if meta.populations is not None and not isinstance(meta.populations, list):
            raise CheckpointCorruptError(f"the 'hubcompare' block's 'populations' must be a list of strings, "
                                         f"not {_json_type(meta.populations)}")
        meta.populations = list(meta.populations or [])
        return meta

    @classmethod
    def from_config(cls, config: dict) -> ModelMeta:
        """From a whole config.json: its ``hubcompare`` block, else what timm's own keys say.

        Raises :class:`~hubcompare.errors.CheckpointCorruptError` (one line, no path: the caller knows
        the file) when the block is not an object or a field has the wrong JSON type.
        """
        if not isinstance(config, dict):
            raise CheckpointCorruptError(f"config.json must be a JSON object, not {_json_type(config)}")
        block = config.get("hubcompare")
        meta = cls.from_dict({} if block is None else block)
        args = config.get("model_args")
        if args is None:
            args = {}
        elif not isinstance(args, dict):
            raise CheckpointCorruptError(f"'model_args' must be a JSON object, not {_json_type(args)}")
        meta.architecture = meta.architecture or config.get("architecture")
        meta.depth = meta.depth if meta.depth is not None else args.get("depth")
        meta.width = meta.width if meta.width is not None else args.get("width")
        meta.num_classes = meta.num_classes if meta.num_classes is not None else config.get("num_classes")
        meta.check_types()
        return meta

    def check_types(self) -> None:
        """Raise :class:`~hubcompare.errors.CheckpointCorruptError` naming the first field whose value has
        the wrong JSON type (numbers for depth/width/accuracy, strings for names, ...)."""
        for name, kinds in _FIELD_TYPES.items():
            value = getattr(self, name)
            if value is None:
                continue
            ok = isinstance(value, kinds) and not isinstance(value, bool)
            if ok and name in _LIST_ITEM_TYPES:
                ok = all(isinstance(v, _LIST_ITEM_TYPES[name]) and not isinstance(v, bool) for v in value)
            if not ok:
                raise CheckpointCorruptError(
                    f"the 'hubcompare' block's {name!r} must be {_KIND_WORDS[kinds]}"
                    f"{_ITEM_WORDS.get(name, '')}, not {short_repr(value, 40)}"
                )

    def to_dict(self) -> dict[str, Any]:
        """The ``hubcompare`` block as written to config.json (fields that are set, then ``extra``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None and not (k == "populations" and not v)}
        return out | self.extra

    def summary(self) -> dict[str, Any]:
        """The keys that identify the model in a population (``SUMMARY_KEYS``), those that are known."""
        return {k: getattr(self, k) for k in SUMMARY_KEYS if getattr(self, k) is not None}

    @property
    def test_fingerprint(self) -> str | None:
        """The fingerprint of the test split the model was evaluated on (None when not recorded)."""
        return (self.test_data or {}).get("fingerprint")

    @property
    def is_hubcompare_run(self) -> bool:
        """Written by ``hubcompare train`` (so it has depth, width, dataset, fraction and seed for a card)."""
        return all(getattr(self, k) is not None for k in ("depth", "width", "dataset", "data_fraction", "seed")) \
            and self.test_data is not None


_NUMBER = (int, float)
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("architecture", "dataset", "recipe_hash", "precision", "created_at", "weights_sha256"), str),
    **dict.fromkeys(("depth", "in_chans", "num_classes", "seed", "epochs", "torch_threads"), int),
    **dict.fromkeys(("width", "bn_momentum", "bn_eps", "data_fraction", "test_accuracy", "train_accuracy",
                     "train_loss", "wall_time_s"), _NUMBER),
    **dict.fromkeys(("class_names", "history", "resumed_at_epochs", "populations"), list),
    **dict.fromkeys(("train_data", "test_data", "recipe", "device", "package_versions", "predictions"), dict),
}
_LIST_ITEM_TYPES = {"class_names": str, "history": dict, "resumed_at_epochs": int, "populations": str}
_ITEM_WORDS = {"class_names": " of strings", "history": " of objects", "resumed_at_epochs": " of integers",
               "populations": " of strings"}
_KIND_WORDS = {str: "a string", int: "an integer", _NUMBER: "a number", list: "a list", dict: "a JSON object"}


def _json_type(value: Any) -> str:
    """How JSON would name the type of ``value`` (for messages about config files)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for kinds, word in _KIND_WORDS.items():
        if isinstance(value, kinds):
            return word if kinds is not _NUMBER else ("an integer" if isinstance(value, int) else "a number")
    return type(value).__name__

