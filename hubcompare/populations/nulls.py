"""What agreement and class-diff share: which population the split-half null comes from, how its
splits are recorded, and the provenance block of a two-sided comparison."""

from __future__ import annotations

import numpy as np

from ..errors import PopulationError, TooFewModelsError
from ..provenance import package_versions
from .sides import Side

__all__ = ["NULL_SIDES", "SPLIT_GENERATOR", "comparison_provenance", "example_split", "null_side_for"]

NULL_SIDES = ("a", "b", "auto")
SPLIT_GENERATOR = ("numpy.random.default_rng(seed): half splits drawn first, then the permutations; "
                   "each split is argsort of uniform draws")


def null_side_for(a: Side, b: Side, choice: str, need: int = 2) -> Side | None:
    """The side whose population gives the null (``choice``: a, b or auto = A when it has ``need`` models,
    else B; None when auto finds neither large enough)."""
    if choice not in NULL_SIDES:
        raise PopulationError(f"null side {choice!r}: use a, b or auto", params=("null_side",))
    if choice == "auto":
        return a if a.num_models >= need else b if b.num_models >= need else None
    side = a if choice == "a" else b
    if side.num_models < need:
        raise TooFewModelsError(f"the null needs two disjoint halves of one population: side {side.label} has "
                                f"{side.num_models} model(s), at least {need} are needed (or let the null side be 'auto').",
                                params=("null_side",))
    return side


def example_split(side: Side, membership: np.ndarray) -> dict:
    """The models in each half of one split (``membership``: +1 first half, -1 second, per model)."""
    return {"first_half": [side.members[i].ref for i in np.flatnonzero(membership == 1)],
            "second_half": [side.members[i].ref for i in np.flatnonzero(membership == -1)]}


def comparison_provenance(command: str, a: Side, b: Side, *, seed: int, null: dict | None, settings: dict) -> dict:
    """The provenance block of a comparison of two sides: the sides, the data, the settings (plus which
    side the null came from), the seed and the null's first split."""
    return {
        "command": command,
        "side_a": a.provenance(), "side_b": b.provenance(), "dataset": a.dataset, "classes": a.classes,
        "settings": settings | {"null_from": null["side"] if null else None},
        "random": {"seed": seed, "generator": SPLIT_GENERATOR, "example_split": null["example_split"] if null else None},
        "package_versions": package_versions(),
    }
