"""agreement and class-diff through the result store: asked again, the same result comes back without computing;
a changed member or option is a new result; other labels are the same result, its JSON and figure relabelled.

The members are copies of one trained digits model, each with its stored predictions perturbed differently (a
population in seconds, no training per member)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hubcompare.cli import app

runner = CliRunner()
FAST = ("--splits", "40", "--permutations", "40")


def _perturb(folder, seed: int, share: float = 0.2) -> np.ndarray:
    """Replace the stored predictions of ``folder`` by ones wrong in other places (a different member); returns right/wrong."""
    from hubcompare.models.checkpoint import CONFIG_FILE
    from hubcompare.models.predictions import Predictions

    p = Predictions.load(folder / "predictions.safetensors")
    g = np.random.default_rng(seed)
    logits = p.logits.clone()
    rows = np.flatnonzero(g.random(len(p.ids)) < share)
    logits[rows] = 0.0
    logits[rows, torch.from_numpy(g.integers(0, logits.shape[1], rows.size))] = 1.0
    p = Predictions(logits, p.labels, p.ids, p.dataset)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["hubcompare"]["predictions"] = p.save(folder / "predictions.safetensors")
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return p.correct.numpy()


@pytest.fixture(scope="module")
def members(tmp_path_factory, trained_run):
    root = tmp_path_factory.mktemp("members")
    out = []
    for i in range(7):
        folder = shutil.copytree(trained_run, root / f"m{i}")
        out.append((folder, _perturb(folder, seed=100 + i)))
    return out


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh result store for the test."""
    monkeypatch.setenv("HUBCOMPARE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _side(members, idx) -> str:
    return "+".join(str(members[i][0]) for i in idx)


def _run(*args):
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), r.stderr


def test_agreement_asked_again_comes_from_the_store(members, home, tmp_path, monkeypatch):
    from hubcompare.comparisons import population_kinds
    from hubcompare.results.store import ResultStore

    a, b = _side(members, range(4)), _side(members, (4, 5))
    first, err = _run("agreement", a, b, *FAST, "--out", str(tmp_path / "one"))
    assert first["from_store"] is False and "stored result" not in err
    ca = np.stack([members[i][1] for i in range(4)])
    cb = np.stack([members[i][1] for i in (4, 5)])
    s = first["summary"]
    assert s["mean_accuracy"]["a"] == pytest.approx(ca.mean(), abs=1e-12)
    assert s["mean_abs_per_example_difference"] == pytest.approx(np.abs(ca.mean(0) - cb.mean(0)).mean(), abs=1e-12)

    def refuse(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(population_kinds, "agreement", refuse)  # a hit must not compute
    again, err = _run("agreement", a, b, *FAST, "--out", str(tmp_path / "two"))
    key = first["result_key"]
    assert again["from_store"] is True and again["result_key"] == key
    assert f"stored result {key[:12]}" in " ".join(err.split()) and "--recompute" in err
    assert again["summary"] == first["summary"] and again["provenance"] == first["provenance"]
    for name in ("agreement.json", "agreement.csv", "agreement.png"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["agreement.csv", "agreement.json", "agreement.png"]
    stored = ResultStore().get(key)
    assert stored.kind == "agreement" and stored.summary["models"] == {"a": 4, "b": 2}
    assert str(members[0][0]) in stored.models and {"agreement.json", "agreement.csv", "agreement.png"} <= set(stored.files)
    # --recompute computes again (the patched function is called)
    r = runner.invoke(app, ["agreement", a, b, *FAST, "--out", str(tmp_path / "three"), "--recompute"])
    assert r.exit_code != 0 and isinstance(r.exception, AssertionError) and "computed again" in str(r.exception)


def test_a_changed_member_or_option_is_a_new_result(members, home, tmp_path):
    a, b = _side(members, range(4)), _side(members, (4, 5))
    base, _ = _run("agreement", a, b, *FAST, "--out", str(tmp_path / "base"))
    keys = {base["result_key"]}
    # another member on side B
    other, _ = _run("agreement", a, _side(members, (4, 6)), *FAST, "--out", str(tmp_path / "other"))
    assert other["from_store"] is False and other["result_key"] not in keys
    keys.add(other["result_key"])
    # the same folder, its predictions replaced (re-evaluated, retrained): never the stale result
    moved = shutil.copytree(members[5][0], tmp_path / "m5")
    side_b = f"{members[4][0]}+{moved}"
    before, _ = _run("agreement", a, side_b, *FAST, "--out", str(tmp_path / "before"))
    assert before["summary"] == base["summary"] and before["result_key"] not in keys  # another path: another model name
    keys.add(before["result_key"])
    correct = _perturb(moved, seed=999, share=0.5)
    after, _ = _run("agreement", a, side_b, *FAST, "--out", str(tmp_path / "after"))
    assert after["from_store"] is False and after["result_key"] not in keys
    keys.add(after["result_key"])
    assert after["summary"]["mean_accuracy"]["b"] == pytest.approx((members[4][1].mean() + correct.mean()) / 2, abs=1e-12)
    # options that change the numbers
    for extra in (("--splits", "41", "--permutations", "40"), (*FAST, "--seed", "1"), (*FAST, "--null-side", "b")):
        r, _ = _run("agreement", a, b, *extra, "--out", str(tmp_path / "opt"))
        assert r["from_store"] is False and r["result_key"] not in keys, extra
        keys.add(r["result_key"])
    # and what does not: the figure's format, the output folder
    r, _ = _run("agreement", a, b, *FAST, "--format", "pdf", "--out", str(tmp_path / "pdf"))
    assert r["from_store"] is True and r["result_key"] == base["result_key"]
    assert (tmp_path / "pdf" / "agreement.pdf").read_bytes().startswith(b"%PDF")


def test_other_labels_are_the_same_result_relabelled(members, home, tmp_path):
    a, b = _side(members, range(4)), _side(members, (4, 5))
    first, _ = _run("agreement", a, b, *FAST, "--out", str(tmp_path / "one"))
    again, _ = _run("agreement", a, b, *FAST, "--label-a", "narrowpop", "--label-b", "widepop", "--out", str(tmp_path / "two"))
    assert again["from_store"] is True and again["result_key"] == first["result_key"]
    assert again["side_a"] == "narrowpop" and again["side_b"] == "widepop" and first["side_a"] != "narrowpop"
    assert again["summary"]["null"]["side"] == "narrowpop" and again["provenance"]["side_a"]["label"] == "narrowpop"
    assert again["summary"]["kappa"] == first["summary"]["kappa"]
    written = json.loads((tmp_path / "two" / "agreement.json").read_text())
    assert written["side_b"] == "widepop" and written["summary"] == again["summary"]
    assert not any(first["side_a"] in w for w in written["warnings"])  # the null's warning names the side by its new label
    # the figure is drawn again: its text (SVG keeps text as text) names the new labels
    svg, _ = _run("agreement", a, b, *FAST, "--label-a", "narrowpop", "--label-b", "widepop", "--format", "svg",
                  "--out", str(tmp_path / "svg"))
    text = (tmp_path / "svg" / "agreement.svg").read_text()
    assert svg["from_store"] is True and "narrowpop (A, 4 models)" in text and "widepop (B, 2 models)" in text
    assert (tmp_path / "two" / "agreement.png").read_bytes() != (tmp_path / "one" / "agreement.png").read_bytes()


def test_class_diff_through_the_store(members, home, tmp_path):
    a, b = _side(members, range(4)), _side(members, (4, 5, 6))
    first, _ = _run("class-diff", a, b, "--splits", "30", "--out", str(tmp_path / "one"))
    r = runner.invoke(app, ["class-diff", a, b, "--splits", "30", "--label-b", "others", "--out", str(tmp_path / "two")])
    assert r.exit_code == 0, r.output
    assert "stored result" in r.stderr and "B = others" in r.output and "Welch's t-test per class" in r.output
    again = json.loads((tmp_path / "two" / "class_diff.json").read_text())
    assert again["classes"] == first["classes"] and again["side_b"] == "others"
    assert (tmp_path / "two" / "class_diff.csv").read_bytes() == (tmp_path / "one" / "class_diff.csv").read_bytes()
    from hubcompare.results.store import ResultStore

    stored = ResultStore().get(first["result_key"])
    assert stored.summary["significant_classes"] == [row["class"] for row in first["classes"] if row["significant"]]
    alpha, _ = _run("class-diff", a, b, "--splits", "30", "--alpha", "0.1", "--out", str(tmp_path / "alpha"))
    assert alpha["from_store"] is False and alpha["result_key"] != first["result_key"]


@pytest.mark.parametrize("sizes", [(12, 10), (1, 1)])
def test_a_figure_drawn_again_from_the_stored_arrays_is_the_same_figure(sizes, tmp_path):
    """What export redraws under other labels is the figure the computation drew (SVG, byte for byte), not an
    approximation: the stored JSON and ``*_figure.npz`` hold everything the figures use."""
    from hubcompare.comparisons import population_kinds as pk
    from hubcompare.populations.agreement import agreement
    from hubcompare.populations.classdiff import class_diff
    from hubcompare.populations.plots import plot_agreement, plot_class_diff
    from hubcompare.populations.synthetic import synthetic_pair

    a, b = synthetic_pair(*sizes, 300, 10, seed=3, reshuffle=0.3)
    cases = [(agreement(a, b, splits=40, permutations=40), plot_agreement, pk._agreement_arrays, pk._agreement_from)]
    if min(sizes) >= 2:
        cases.append((class_diff(a, b, splits=40), plot_class_diff, pk._class_diff_arrays, pk._class_diff_from))
    for result, plot, arrays, rebuild in cases:
        pk._save_npz(tmp_path / "f.npz", arrays(result))
        doc = json.loads(json.dumps(result.to_json()))
        drawn = plot(result, tmp_path / "a.svg")
        redrawn = plot(rebuild(doc, pk._load_npz(tmp_path / "f.npz")), tmp_path / "b.svg")
        assert drawn.read_bytes() == redrawn.read_bytes(), plot.__name__
