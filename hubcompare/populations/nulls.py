"""What agreement and class-diff share: which population the split-half null comes from, how its
splits are recorded, and the provenance block of a two-sided comparison."""

from __future__ import annotations

import math

import numpy as np

from ..errors import PopulationError, TooFewModelsError
from ..provenance import package_versions
from .sides import Side

__all__ = ["MIN_NULL_HALF", "NULL_SIDES", "SPLIT_GENERATOR", "comparison_provenance", "distinct_splits", "example_split",
           "null_side_for", "small_null_warning"]

# Halves smaller than this make a null too coarse to carry weight. m models split into two halves of
# h have only C(m, h) C(m - h, h) / 2 distinct splits: 35 for 8 models (h = 4), so 2.5% of them is
# less than one split and the 95% band's edges are single extreme splits; 126 for 10 models (h = 5),
# about 3 splits per tail. Each example's half-accuracy takes only h + 1 values, so the band's edges
# sit on heavy atoms of a coarse lattice: at h = 3 the halves put 1.5% of examples outside their own
# band, at h = 1-2 none. (Agreement's count of examples outside the band is judged against model
# relabellings at the sides' sizes, which the halves' size does not bias; class-diff's null counts
# are the halves'.)
MIN_NULL_HALF = 5

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


def distinct_splits(models: int, half: int) -> int:
    """How many different unordered pairs of disjoint halves of ``half`` models ``models`` models have."""
    return math.comb(models, half) * math.comb(models - half, half) // 2


def small_null_warning(side: str, models: int, half: int) -> str | None:
    """The plain warning for a null whose halves are under :data:`MIN_NULL_HALF` models; None when large enough."""
    if half >= MIN_NULL_HALF:
        return None
    return (f"the null is too small to carry weight: its halves hold {half} model(s) each ({models} in {side}), "
            f"so it has only {distinct_splits(models, half)} distinct split(s) and each example's half-accuracy takes "
            f"{half + 1} values; its band is coarse, and counts of its own splits (classes significant per split) "
            f"are not findings. Halves of at least {MIN_NULL_HALF} models "
            f"({2 * MIN_NULL_HALF}+ models on the null's side) are needed; add seeds to {side}")


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
