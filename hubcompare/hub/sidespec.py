"""The side grammar: how one string names one model or several. A leaf, like :mod:`.names`: the CLI, the service,
request validation and :func:`hubcompare.populations.sides.expand_side` all read sides with it.

    SIDE := '@' FILE | ITEM ('+' ITEM)*
    ITEM := population:NAME | registry:KEY=VALUE,... | hf-tag:TAG[,TAG...] | collection:SLUG | a model reference

A side that is an existing folder is one model, '+' and all (a folder's name may hold one): the caller says what is
a folder (``is_folder``); the service, which opens no paths, says nothing is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FILE_PREFIX", "SIDE_SCHEMES", "SideItem", "is_local_folder", "names_many_models", "side_items"]

SIDE_SCHEMES = ("population", "registry", "hf-tag", "collection")  # items that name models without a path
FILE_PREFIX = "@"  # @FILE: the models listed in FILE, one item per line


@dataclass(frozen=True)
class SideItem:
    """One item of a side, stripped: ``scheme`` is one of :data:`SIDE_SCHEMES` (``rest`` what follows its colon), or
    None for a model reference (``text`` is the reference)."""

    text: str
    scheme: str | None = None
    rest: str = ""


def is_local_folder(text: str) -> bool:
    """Whether ``text`` is a folder on this machine (a checkpoint folder, whatever its name holds)."""
    try:
        return Path(text).expanduser().is_dir()
    except (OSError, ValueError):
        return False


def _item(text: str) -> SideItem:
    scheme, sep, rest = text.partition(":")
    return SideItem(text, scheme, rest) if sep and scheme in SIDE_SCHEMES else SideItem(text)


def side_items(spec: str, is_folder: Callable[[str], bool] = lambda text: False) -> list[SideItem]:
    """The items of ``spec`` in order. An ``@FILE`` spec is one item (its file lists the items) and so is a folder;
    an empty item (``A++B``) is kept, as ``SideItem("")``, for the caller to refuse."""
    spec = spec.strip()
    if spec.startswith(FILE_PREFIX) or "+" not in spec or is_folder(spec):
        return [_item(spec)]
    return [_item(text.strip()) for text in spec.split("+")]


def names_many_models(spec: str, is_folder: Callable[[str], bool] = lambda text: False) -> bool:
    """Whether ``spec`` is a many-model side (``@FILE``, a scheme, models joined by '+') rather than one model."""
    spec = spec.strip()
    items = side_items(spec, is_folder)
    return spec.startswith(FILE_PREFIX) or len(items) > 1 or items[0].scheme is not None
