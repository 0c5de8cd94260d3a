"""What figures, tables and file names call a model: the card's name ("ResNet-20 (1x)"), not its path.

A model's default label comes from its metadata (depth and width, as the model card titles it); a
model without them (a timm model, a foreign checkpoint) is called by its short reference (the last
part of its path or repository name). Labels of one comparison are made unique: models that would
share one are told apart by what differs between them (data fraction, dataset, seed), then by their
short references, then by their position.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Sequence

__all__ = ["default_label", "file_slugs", "short_reference", "unique_labels"]

# metadata keys that tell two models of the same architecture apart, in the order a reader looks for them
DISTINGUISHING = (
    ("data_fraction", lambda f: "all the data" if f == 1 else f"{Fraction(f).limit_denominator(1000)} of the data"),
    ("dataset", "on {}".format),
    ("seed", "seed {}".format),
)


def short_reference(ref: str) -> str:
    """``runs/a-s0`` -> ``a-s0``; ``hf-hub:alice/r20@abc`` -> ``r20``; ``timm:resnet18`` -> ``resnet18``."""
    body = ref.split(":", 1)[1] if re.match(r"^[a-z][a-z-]*:(?!\\)", ref) else ref
    body = body.split("@", 1)[0].rstrip("/\\")
    return re.split(r"[/\\]", body)[-1] or ref


def default_label(info: dict, ref: str) -> str:
    """The card's name of a model from its metadata (``depth``, ``width``), else its short reference."""
    depth, width = info.get("depth"), info.get("width")
    if isinstance(depth, int) and isinstance(width, (int, float)) and info.get("architecture", "cifar_resnet") == "cifar_resnet":
        return f"ResNet-{depth} ({width:g}x)"
    return short_reference(ref)


def unique_labels(infos: Sequence[dict], refs: Sequence[str], given: Sequence[str | None] | None = None) -> list[str]:
    """One label per model: ``given`` where set, else :func:`default_label`; default labels that collide get
    what differs between the colliding models appended (``ResNet-20 (1x), seed 3``)."""
    given = list(given or [None] * len(refs))
    labels = [g if g else default_label(info, ref) for info, ref, g in zip(infos, refs, given)]
    base = list(labels)
    for i in _collisions(base):
        if given[i]:
            continue
        group = [j for j, lab in enumerate(base) if lab == base[i]]
        extra = [say(infos[i][key]) for key, say in DISTINGUISHING
                 if infos[i].get(key) is not None and len({str(infos[j].get(key)) for j in group}) > 1]
        if extra:
            labels[i] = f"{base[i]}, {', '.join(extra)}"
    for i in _collisions(labels):
        if not given[i] and short_reference(refs[i]) not in labels[i]:
            labels[i] = f"{labels[i]} [{short_reference(refs[i])}]"
    seen: dict[str, int] = {}
    dupes = set(_collisions(labels))
    for i, lab in enumerate(labels):
        if i in dupes:
            seen[lab] = seen.get(lab, 0) + 1
            labels[i] = f"{lab} #{seen[lab]}"
    return labels


def file_slugs(labels: Sequence[str]) -> list[str]:
    """A distinct file-name-safe form of each label (``ResNet-20 (1x)`` -> ``ResNet-20_1x``)."""
    slugs = [re.sub(r"[^A-Za-z0-9.-]+", "_", lab).strip("_.")[:60] or "model" for lab in labels]
    counts: dict[str, int] = {}
    for s in slugs:
        counts[s] = counts.get(s, 0) + 1
    out, seen = [], {}
    for s in slugs:
        seen[s] = seen.get(s, 0) + 1
        out.append(s if counts[s] == 1 else f"{s}-{seen[s]}")
    return out


def _collisions(labels: Sequence[str]) -> list[int]:
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return [i for i, lab in enumerate(labels) if counts[lab] > 1]
