"""Every sentence a command prints or the report writes about results is computed from the numbers it shows: built
here on synthetic results where each claim is true and where it is false, and checked against the data.

Probes (``probe_sentence``), deletion (``deletion_sentence``, ``accuracy_change``), the probes' training count shown
in the text and the figure (``probe_fit_text``), the small-null note of agreement and class-diff
(``small_null_note``) and across-seeds' inside/outside line (``seeds_sentence``)."""

from __future__ import annotations

import re

import pytest

from hubcompare.populations.wording import seeds_sentence, small_null_note
from hubcompare.probes.deletion import DeletionResult
from hubcompare.probes.linear import ProbeResult
from hubcompare.probes.summary import (
    accuracy_change,
    deletion_costs,
    deletion_sentence,
    probe_fit_text,
    probe_sentence,
    probe_steps,
    probe_training_counts,
)

LAYERS = ["stem", "stage1.block1.out", "stage1.block2.out", "stage2.block1.out", "stage2.block2.out", "stage3.block1.out", "pool"]
BLOCK = [{"layers": ["stage1.block2.out", "stage2.block1.out", "stage2.block2.out"]}]


def probes(accuracies, blocks=(), source="detected here") -> ProbeResult:
    """A probe result on LAYERS (a residual branch before each block output, which the sentences leave out)."""
    rows = []
    for i, (name, acc) in enumerate(zip(LAYERS, accuracies)):
        if name.endswith(".out"):
            rows.append({"index": len(rows), "name": name.replace(".out", ".branch"), "kind": "branch", "test_accuracy": 0.05})
        rows.append({"index": len(rows), "name": name, "kind": "out" if name.endswith(".out") else name, "test_accuracy": acc})
    settings = {"validation": {"fit_examples": 358, "validation_examples": 40}, "train": {"num_examples": 398, "name": "digits"},
                "test": {"num_examples": 200, "name": "digits"}, "pooling": "none", "blocks": {"source": source}}
    return ProbeResult("toy", rows, [1, 3, 5], 0.9, {}, settings, list(blocks))


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", text)]


def test_probe_sentence_flat_inside_the_block_rising_outside():
    r = probes([0.20, 0.40, 0.60, 0.61, 0.60, 0.80, 0.90], BLOCK)
    s = probe_steps(r)
    assert [round(x, 4) for x in s["inside"]] == [0.01, -0.01] and [round(x, 4) for x in s["outside"]] == [0.2, 0.2, 0.2, 0.1]
    text = probe_sentence(r)
    assert "+0.0000 a layer on average (2 steps)" in text and "outside it by +0.1750 a layer (4 steps)" in text
    assert "is lower inside a block than outside" in text and "higher inside" not in text
    assert "block 1 (stage1.block2.out .. stage2.block2.out): 0.6000 -> 0.6000 (+0.0000)" in text
    assert "branch" not in text  # residual branches are not on the main path


def test_probe_sentence_rising_inside_the_block_says_so():
    """The paper's claim is false here: the sentence says what the numbers show, not the claim."""
    r = probes([0.50, 0.50, 0.20, 0.50, 0.80, 0.80, 0.80], BLOCK)
    text = probe_sentence(r)
    assert "changes by +0.3000 a layer on average (2 steps)" in text and "outside it by -0.0750" in text
    assert "is higher inside a block than outside" in text and "lower inside" not in text
    assert "0.2000 -> 0.8000 (+0.6000)" in text
    two = [{"layers": ["stage1.block1.out", "stage1.block2.out"]}, {"layers": ["stage2.block1.out", "stage2.block2.out"]}]
    text = probe_sentence(probes([0.50, 0.50, 0.20, 0.50, 0.80, 0.80, 0.80], two))
    # inside: -0.3 (block 1), +0.3 (block 2); outside: 0.0, +0.3, 0.0, 0.0
    assert text.startswith("Inside the detected blocks, probe accuracy changes by +0.0000 a layer on average (2 steps)")
    assert "outside them by +0.0750 a layer (4 steps)" in text and "is lower inside a block than outside" in text


def test_probe_sentence_without_a_block_makes_no_block_claim():
    for r, why in ((probes([0.2, 0.4, 0.6, 0.6, 0.6, 0.8, 0.9]), "No block was detected"),
                   (probes([0.2, 0.4, 0.6, 0.6, 0.6, 0.8, 0.9], source="none"), "No blocks were given")):
        text = probe_sentence(r)
        assert text.startswith(why) and "inside a block" not in text.replace("inside-vs-outside", "")
        assert "from stem to pool probe accuracy goes 0.2000 -> 0.9000 (+0.7000)" in text
    # a block none of whose layers were probed twice in a row: no comparison either
    text = probe_sentence(probes([0.2] * 7, [{"layers": ["stage1.block1.out", "elsewhere"]}]))
    assert text.startswith("No two consecutive probed layers lie in the same detected block")


def test_probe_training_count_is_one_number_in_the_text_and_the_figure(tmp_path):
    """The probe is refit on the fit part and the held-out part together: 398, never the 358 of the L2 path."""
    from hubcompare.probes.plots import plot_probes

    r = probes([0.2, 0.4, 0.6, 0.6, 0.6, 0.8, 0.9], BLOCK)
    assert probe_training_counts(r) == (398, 358, 40)
    assert probe_fit_text(r) == "fit on 398 training examples (L2 chosen on 40 of them held out)"
    svg = plot_probes(r, tmp_path / "p.svg").read_text()
    assert probe_fit_text(r) in svg and "358" not in svg


def deletion(stages, blocks=()) -> DeletionResult:
    """A deletion result: ``stages`` as {stage: [(layer, accuracy after deleting it and the later ones), ...]}
    listed from the stage's last block backwards; full accuracy 0.9."""
    out = []
    for k, gone in stages.items():
        steps = [{"deleted": 0, "blocks": [], "accuracy": 0.9, "drop": 0.0}]
        for i, (layer, acc) in enumerate(gone, 1):
            steps.append({"deleted": i, "blocks": [g for g, _ in gone[:i]][::-1], "accuracy": acc, "drop": 0.9 - acc})
        out.append({"stage": k, "blocks": [{"layer": g, "deletable": True} for g, _ in gone[::-1]], "steps": steps})
    return DeletionResult("toy", 0.9, out, {}, {"blocks": {"source": "detected here"}}, list(blocks))


DELETIONS = {2: [("stage2.block2.out", 0.89), ("stage2.block1.out", 0.88)], 3: [("stage3.block2.out", 0.5)]}


def test_deletion_sentence_cheap_inside_costly_outside():
    r = deletion(DELETIONS, BLOCK)
    c = deletion_costs(r)
    assert [(s["layer"], s["inside"], round(s["change"], 4)) for s in c["steps"]] == [
        ("stage2.block2.out", True, -0.01), ("stage2.block1.out", True, -0.01), ("stage3.block2.out", False, -0.4)]
    text = deletion_sentence(r)
    assert text.startswith("Full model: 0.9000 test accuracy.")
    assert "inside a detected block changes accuracy by -0.0100 on average (2 deletions;" in text
    assert "outside, by -0.4000 (1 deletion; largest loss: stage3.block2.out, 0.9000 -> 0.5000 (-0.4000))" in text
    assert text.endswith("the mean change is higher inside a block than outside.")


def test_deletion_sentence_costly_inside_says_so():
    r = deletion({2: [("stage2.block2.out", 0.3)], 3: [("stage3.block2.out", 0.89)]}, BLOCK)
    text = deletion_sentence(r)
    assert "by -0.6000 on average (1 deletion;" in text and "outside, by -0.0100" in text
    assert text.endswith("the mean change is lower inside a block than outside.")


def test_deletion_sentence_without_a_block_makes_no_block_claim():
    text = deletion_sentence(deletion(DELETIONS))
    assert "No block was detected" in text and "inside a detected block" not in text
    assert "changes accuracy by -0.1400 on average (3 deletions; largest loss: stage3.block2.out" in text
    outside_only = deletion_sentence(deletion(DELETIONS, [{"layers": ["stem", "stage1.block1.out"]}]))
    assert "None of the deleted residual blocks lies inside a detected block" in outside_only
    gains = deletion_sentence(deletion({2: [("stage2.block2.out", 0.91)]}))
    assert "+0.0100" in gains and "none lowers accuracy" in gains and "loss:" not in gains


def test_accuracy_change_reads_one_way():
    assert accuracy_change(0.52, 0.11) == "0.5200 -> 0.1100 (-0.4100)"
    assert accuracy_change(0.52, 0.53) == "0.5200 -> 0.5300 (+0.0100)"


def null(too_small=True, p=0.03) -> dict:
    return {"side": "A", "splits": 10, "half_size": 2, "too_small": too_small, "min_half_size": 5, "outside_band": 12,
            "expected_outside_under_null": 4.5, "outside_band_p_value": p, "mean_significant_q": 0.2,
            "share_of_splits_with_any_significant": 0.1}


def test_small_null_note_names_only_figures_the_command_has():
    assert small_null_note(null(too_small=False), "agreement") is None
    assert small_null_note(null(too_small=False), "class-diff") is None
    ag = small_null_note(null(), "agreement")
    assert ag.startswith("too few models for this null to carry weight: halves of 2 models (at least 5 needed)")
    assert "outside count against its expected value (12 vs 4.5, p = 0.03)" in ag
    assert "p-value" in small_null_note(null(p=None), "agreement") and "p = " not in small_null_note(null(p=None), "agreement")
    cd = small_null_note(null(), "class-diff")
    assert "outside" not in cd and "per-class Welch tests" in cd
    with pytest.raises(ValueError):
        small_null_note(null(), "across-seeds")


def seeds_summary(outside: float, inside: float, blocks=(2, 2), n_inside=6) -> dict:
    stat = lambda m, n: {"mean": m if n else float("nan"), "sd": 0.1 if n > 1 else float("nan"), "n": n}  # noqa: E731
    sets = {k: {"outside": stat(outside, 10), "partly": stat(0.5, 4), "inside": stat(inside, n_inside)}
            for k in ("within_a", "within_b", "across_on_a", "across_on_b")}
    return sets | {"models_with_a_block": {"a": blocks[0], "b": blocks[1]},
                   "pairs": {k: 1 for k in sets}, "models": {"a": 2, "b": 2}}


def test_seeds_sentence_follows_the_numbers():
    text = seeds_sentence(seeds_summary(0.71, 0.34), "deep", "shallow")
    assert "within deep: outside both blocks 0.710 ± 0.100 (n=10), inside both 0.340 ± 0.100 (n=6), higher outside" in text
    assert "higher inside" not in text
    assert "higher inside" in seeds_sentence(seeds_summary(0.3, 0.8), "deep", "shallow")
    none = seeds_sentence(seeds_summary(0.7, 0.0, blocks=(0, 0), n_inside=0), "deep", "shallow")
    assert none.startswith("No model has a block") and "higher" not in none
    one = seeds_sentence(seeds_summary(0.7, 0.0, blocks=(1, 0), n_inside=0), "deep", "shallow")
    assert "within deep: no value with both layers in their blocks" in one and "higher" not in one
    assert numbers(text)[:2] == [0.71, 0.1]
