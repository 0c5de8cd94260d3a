"""What the probes and the deletion curves show, in words computed from their numbers (what the report's sections
and the CLI print): every claim about blocks is made only when a block was detected and the numbers say so.

* :func:`probe_training_counts` / :func:`probe_fit_text`: how many training examples a probe was fit on (the text
  and the figure title both read them here: one source for the count);
* :func:`probe_steps` / :func:`probe_sentence`: the change in probe accuracy from one main-path layer to the next,
  inside the detected blocks against outside them;
* :func:`deletion_costs` / :func:`deletion_sentence`: what deleting one more residual block changes, for the blocks
  that lie inside a detected block against the others;
* :func:`accuracy_change`: ``0.5200 -> 0.1100 (-0.4100)``, a change whose sign reads one way only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # only their attributes are read: importing this module loads no torch
    from .deletion import DeletionResult
    from .linear import ProbeResult

__all__ = ["SAME", "accuracy_change", "block_layer_lists", "deletion_costs", "deletion_sentence", "probe_fit_text",
           "probe_sentence", "probe_steps", "probe_training_counts"]

SAME = 0.0005  # mean changes closer than this (half the last shown digit of .3f) are "about the same"


def block_layer_lists(blocks: Sequence | None) -> list[list[str]]:
    """Each detected block's layer names, from :class:`~hubcompare.similarity.blocks.Block` objects, their JSON
    (``layers``: the names), or benchmarks/blocks_plain_loop.py's records (``names``; there ``layers`` is "LO-HI")."""
    out = []
    for b in blocks or ():
        names = (b["names"] if "names" in b else b["layers"]) if isinstance(b, dict) else b.layers
        out.append([names] if isinstance(names, str) else list(names))
    return out


def accuracy_change(before: float, after: float) -> str:
    """``0.8120 -> 0.3960 (-0.4160)``: from, to, and the signed change (negative: accuracy lost)."""
    return f"{before:.4f} -> {after:.4f} ({after - before:+.4f})"


def _blocks(result, blocks) -> list[list[str]]:
    return block_layer_lists(result.blocks if blocks is None else blocks)


def _no_block(result, blocks) -> str:
    """Why there is no block to compare with: none was looked for (``--blocks none``), or none was detected."""
    given = (result.settings.get("blocks") or {}).get("source") if isinstance(result.settings, dict) else None
    if blocks is None and given == "none":
        return "No blocks were given (blocks: none), so there is no inside-vs-outside comparison"
    return "No block was detected, so there is no inside-vs-outside comparison"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _compare(inside: float, outside: float) -> str:
    """How the inside mean stands to the outside one, in words (closer than :data:`SAME`: about the same)."""
    if abs(inside - outside) < SAME:
        return "about the same inside a block as outside"
    return ("higher" if inside > outside else "lower") + " inside a block than outside"


# -- probes ------------------------------------------------------------------------------------------------------


def probe_training_counts(result: ProbeResult) -> tuple[int, int, int]:
    """(training examples each probe is fit on, the part the L2 path is fit on, the part held out to choose the
    L2): the final probe is refit on both parts, so the first is the sum of the other two."""
    v = result.settings.get("validation") or {}
    if "fit_examples" not in v or "validation_examples" not in v:  # a result written without them: the training split's
        n = int(result.settings["train"]["num_examples"])
        return n, n, 0
    fit, held = int(v["fit_examples"]), int(v["validation_examples"])
    return fit + held, fit, held


def probe_fit_text(result: ProbeResult) -> str:
    """``fit on 398 training examples (L2 chosen on 40 of them held out)``: the figure's title and the report's text."""
    total, _, held = probe_training_counts(result)
    return f"fit on {total} training examples" + (f" (L2 chosen on {held} of them held out)" if held else "")


def probe_steps(result: ProbeResult, blocks: Sequence | None = None) -> dict:
    """The change in probe test accuracy from each main-path layer (every layer but the residual branches) to the
    next, split into ``inside`` (both layers in the same detected block) and ``outside`` (the rest); per block, its
    first and last probed layer and their accuracies. ``blocks``: default the result's own."""
    main = [r for r in result.layers if r.get("kind") != "branch"] or list(result.layers)
    acc = {r["name"]: r["test_accuracy"] for r in main}
    names = [r["name"] for r in main]
    where = {}
    per_block = []
    for k, layers in enumerate(_blocks(result, blocks)):
        probed = [n for n in names if n in set(layers)]
        for n in probed:
            where[n] = k
        if probed:
            per_block.append({"block": k + 1, "first": probed[0], "last": probed[-1], "layers": len(probed),
                              "first_accuracy": acc[probed[0]], "last_accuracy": acc[probed[-1]]})
    inside, outside = [], []
    for a, b in zip(names, names[1:]):
        step = acc[b] - acc[a]
        (inside if a in where and where.get(b) == where[a] else outside).append(step)
    return {"layers": names, "inside": inside, "outside": outside, "blocks": per_block,
            "detected": len(_blocks(result, blocks))}


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def probe_sentence(result: ProbeResult, blocks: Sequence | None = None) -> str:
    """What the probe accuracies do inside the detected blocks against outside them, in numbers; with no block
    (or no two probed layers in one) what they do from the first layer to the last, and no claim about blocks."""
    s = probe_steps(result, blocks)
    names = s["layers"]
    if not names:
        return "No layer was probed."
    first, last = result.layer(names[0]), result.layer(names[-1])
    whole = (f"from {names[0]} to {names[-1]} probe accuracy goes "
             f"{accuracy_change(first['test_accuracy'], last['test_accuracy'])}")
    if not s["detected"]:
        return f"{_no_block(result, blocks)}: {whole}."
    if not s["inside"]:
        return (f"No two consecutive probed layers lie in the same detected block, so there is no inside-vs-outside "
                f"comparison: {whole}.")
    mean_in = _mean(s["inside"])
    text = ("Inside the detected " + ("block" if len(s["blocks"]) == 1 else "blocks") + ", probe accuracy changes by "
            f"{mean_in:+.4f} a layer on average ({_count(len(s['inside']), 'step')})")
    if s["outside"]:
        mean_out = _mean(s["outside"])
        text += (f"; outside {'it' if len(s['blocks']) == 1 else 'them'} by {mean_out:+.4f} a layer ({_count(len(s['outside']), 'step')}): the change a layer "
                 f"is {_compare(mean_in, mean_out)}")
    else:
        text += "; every step lies inside a block, so there is nothing outside to compare with"
    spans = "; ".join(f"block {b['block']} ({b['first']} .. {b['last']}): "
                      f"{accuracy_change(b['first_accuracy'], b['last_accuracy'])}" for b in s["blocks"])
    return f"{text}. Across each block, first to last probed layer: {spans}."


# -- deletion ----------------------------------------------------------------------------------------------------


def deletion_costs(result: DeletionResult, blocks: Sequence | None = None) -> dict:
    """Each deletion's marginal change: the accuracy after deleting one more residual block (with every later block
    of its stage already deleted) minus the accuracy before it, marked ``inside`` when that block's output layer
    lies in a detected block. ``blocks``: default the result's own."""
    inside_names = {n for layers in _blocks(result, blocks) for n in layers}
    steps = []
    for st in result.stages:
        for prev, cur in zip(st["steps"], st["steps"][1:]):
            layer = cur["blocks"][0]
            steps.append({"stage": st["stage"], "layer": layer, "before": prev["accuracy"], "after": cur["accuracy"],
                          "change": cur["accuracy"] - prev["accuracy"], "inside": layer in inside_names})
    return {"steps": steps, "detected": len(_blocks(result, blocks))}


def _worst(steps: list[dict]) -> str:
    w = min(steps, key=lambda s: s["change"])
    if w["change"] >= 0:
        return "none lowers accuracy"
    return f"largest loss: {w['layer']}, {accuracy_change(w['before'], w['after'])}"


def deletion_sentence(result: DeletionResult, blocks: Sequence | None = None) -> str:
    """What deleting one more residual block does to the accuracy inside the detected blocks against outside them,
    in numbers (negative: accuracy lost); with no block, or none of the deleted blocks in one, what it does overall
    and no claim about blocks."""
    c = deletion_costs(result, blocks)
    steps = c["steps"]
    head = f"Full model: {result.full_accuracy:.4f} test accuracy. "
    if not steps:
        return head + "No residual block could be deleted."
    overall = (f"deleting one more residual block changes accuracy by {_mean([s['change'] for s in steps]):+.4f} on "
               f"average ({_count(len(steps), 'deletion')}; {_worst(steps)})")
    if not c["detected"]:
        return head + f"{_no_block(result, blocks)}: {overall}."
    inside = [s for s in steps if s["inside"]]
    outside = [s for s in steps if not s["inside"]]
    if not inside:
        return head + f"None of the deleted residual blocks lies inside a detected block: {overall}."
    mean_in = _mean([s["change"] for s in inside])
    text = (head + f"Deleting one more residual block inside a detected block changes accuracy by {mean_in:+.4f} on "
            f"average ({_count(len(inside), 'deletion')}; {_worst(inside)})")
    if not outside:
        return text + "; every deleted block lies inside a block, so there is nothing outside to compare with."
    mean_out = _mean([s["change"] for s in outside])
    return (text + f"; outside, by {mean_out:+.4f} ({_count(len(outside), 'deletion')}; {_worst(outside)}): the mean "
            f"change is {_compare(mean_in, mean_out)}.")
