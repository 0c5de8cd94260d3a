"""Data that ships inside the package: ``recipes`` (training recipes) and ``registry`` (curated entries).

Their one copy is the repository's top-level ``recipes/`` and ``registry/`` folders, which the build
maps to ``hubcompare.bundled.recipes`` and ``hubcompare.bundled.registry`` (see ``pyproject.toml``).
Read them with :func:`bundled_dir`, never by a path relative to the source tree, so an installed
wheel finds them too.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

__all__ = ["bundled_dir"]


def bundled_dir(kind: str) -> Traversable:
    """The bundled ``recipes`` or ``registry`` folder, wherever the package is installed."""
    if kind not in ("recipes", "registry"):
        raise ValueError(f"no bundled {kind!r}: recipes or registry")
    return resources.files(f"{__name__}.{kind}")
