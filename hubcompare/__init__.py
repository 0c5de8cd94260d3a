"""hubcompare: do these two neural networks learn the same things?

``import hubcompare`` registers the ``cifar_resnet`` family with timm, so ``timm.create_model(
"cifar_resnet", ...)`` and ``local-dir:``/``hf-hub:`` checkpoint folders load with plain timm.

The ``hubcompare`` command is the one exception: it skips that import so that commands which run
no model (``--help``, ``registry``, ``hub serve``, ``push``, ``info``) start without loading torch;
its model commands load a checkpoint through :mod:`hubcompare.models.weights`, which registers the
family itself.

``hubcompare.compare`` is the Python API (:mod:`hubcompare.comparisons.library`): the CLI's batch plan, labels,
warnings and, with ``store=``, its result store. It is imported on first use, so the command never loads it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import HubcompareError

__version__ = "0.1.0"
__all__ = ["HubcompareError", "__version__", "compare"]

COMMAND = "hubcompare"  # the console script's name (pyproject.toml [project.scripts])

if Path(sys.argv[0] if sys.argv else "").stem != COMMAND:
    from .models import resnet as _resnet  # noqa: F401  (registers cifar_resnet with timm)


def __getattr__(name: str):
    """``hubcompare.compare``: the Python API, imported on first use (PEP 562)."""
    if name == "compare":
        from .comparisons.library import compare

        return compare
    raise AttributeError(f"module 'hubcompare' has no attribute {name!r}")
