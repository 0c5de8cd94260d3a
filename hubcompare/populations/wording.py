"""What the population commands' numbers say, in words computed from them (what ``agreement``, ``class-diff`` and
``across-seeds`` print): a sentence names only figures the result has, and a comparison only when both sides of it
exist.

* :func:`small_null_note`: when a split-half null's halves are too small to carry weight, which figure to read
  instead: the outside count's test for ``agreement`` (when it has a p-value), the per-class tests for
  ``class-diff`` (it has no outside count);
* :func:`seeds_sentence`: for ``across-seeds``, seed pairs' CKA outside both models' blocks against inside both.
"""

from __future__ import annotations

import math

__all__ = ["SAME", "seeds_sentence", "small_null_note"]

SAME = 0.0005  # means closer than this (half the last shown digit) are "about the same"


def _p(v) -> str:
    return f"{v:.3g}"


def small_null_note(null: dict, kind: str) -> str | None:
    """The note beside a split-half null whose halves are too small (``null["too_small"]``), else None. ``null``: the
    ``summary()["null"]`` of an agreement (``kind="agreement"``) or class-diff (``kind="class-diff"``) result."""
    if not null.get("too_small"):
        return None
    half = null["half_size"]
    head = (f"too few models for this null to carry weight: halves of {half} model{'' if half == 1 else 's'} (at least "
            f"{null['min_half_size']} needed)")
    if kind == "agreement":
        p = null.get("outside_band_p_value")
        if p is None:
            return head + "; its band is coarse, and its outside count has no p-value here: read it as a rough count"
        return (head + f"; its band is coarse, so read the outside count against its expected value ({null['outside_band']} "
                f"vs {null['expected_outside_under_null']:.1f}, p = {_p(p)}) rather than the band itself")
    if kind == "class-diff":
        return (head + "; its per-split counts of significant classes are coarse, so the per-class Welch tests "
                "(their q-values) are the figures to read")
    raise ValueError(f"small_null_note: kind is agreement or class-diff, got {kind!r}")


def _fmt(stat: dict) -> str:
    sd = stat.get("sd")
    return f"{stat['mean']:.3f}" + ("" if sd is None or not math.isfinite(sd) else f" ± {sd:.3f}") + f" (n={stat['n']})"


def seeds_sentence(summary: dict, label_a: str, label_b: str) -> str:
    """For each set of pairs (within A, within B, across on either side's layers), the CKA of (pair, layer) values
    outside both blocks against inside both, and which is higher; with no model with a block, no comparison.
    ``summary``: a :class:`~hubcompare.populations.seeds.SeedsResult`'s ``summary()``."""
    blocks = summary["models_with_a_block"]
    if not blocks["a"] and not blocks["b"]:
        return "No model has a block, so every (pair, layer) value lies outside both blocks: no inside-vs-outside comparison."
    names = {"within_a": f"within {label_a}", "within_b": f"within {label_b}",
             "across_on_a": f"across, on {label_a}'s layers", "across_on_b": f"across, on {label_b}'s layers"}
    parts = []
    for key, name in names.items():
        if not summary["pairs"].get(key):
            continue
        out, ins = summary[key]["outside"], summary[key]["inside"]
        if not ins["n"]:
            parts.append(f"{name}: no value with both layers in their blocks")
            continue
        if not out["n"]:
            parts.append(f"{name}: no value with both layers outside their blocks")
            continue
        d = out["mean"] - ins["mean"]
        word = "about the same" if abs(d) < SAME else ("higher outside" if d > 0 else "higher inside")
        parts.append(f"{name}: outside both blocks {_fmt(out)}, inside both {_fmt(ins)}, {word}")
    return "Seed pairs' CKA, " + "; ".join(parts) + "." if parts else "No pair of models to compare."
