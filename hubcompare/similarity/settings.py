"""What one comparison pass is asked to do: every setting in one frozen record, passed whole through every layer.

:func:`~.engine.compare`, :class:`~.engine.ComparisonPass` and the Ray shards' ``compare`` take a
:class:`PassSettings` (or its fields as keywords, which build one), so a setting is added in one place and reaches
the workers as the driver resolved it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from ..errors import CompareError

if TYPE_CHECKING:
    from .measures import Measure

__all__ = ["MEASURE_PAIRS", "PassSettings"]

# the layer pairs the other measures compute: every pair, or only those between two models' layers (and each layer
# with itself): what compare and across-seeds report, about half the pairs of two models and fewer with more
MEASURE_PAIRS = ("all", "across")


@dataclass(frozen=True)
class PassSettings:
    """The settings of one comparison pass (:func:`~.engine.compare` documents each); defaults as the CLI's."""

    batch_size: int | None = None  # None: the CLI's plan (choose_batch_plan)
    passes: int = 1
    seed: int = 0
    num_examples: int | None = None  # the first N examples; None: all
    remove_pc1: bool = False
    device: Any = "cpu"  # a name or a torch.device
    pipeline: str = "auto"
    hsic_products: str | None = None
    memory_format: str = "auto"
    fuse_batchnorm: bool = True
    measures: tuple[Measure, ...] = ()  # computed beside linear CKA (similarity.measures)
    measure_pairs: str = "all"  # which layer pairs those measures compute: "all", or "across" (MEASURE_PAIRS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "measures", tuple(self.measures))

    @classmethod
    def of(cls, settings: PassSettings | None = None, **options: Any) -> PassSettings:
        """``settings`` (default: the defaults) with ``options`` replaced; an unknown option is a typed error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise CompareError(f"unknown comparison setting {', '.join(map(repr, unknown))}: the settings are "
                               f"{', '.join(sorted(known))}")
        return replace(settings or cls(), **options)
