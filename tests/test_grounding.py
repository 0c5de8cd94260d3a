"""`hubcompare grounding`: the tests' scores against independent references (scipy, scikit-learn, numpy), the
shuffled-label recipe key, and the command on a small digits population (files, numbers, errors)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from hubcompare.cli.main import app
from hubcompare.data.datasets import shuffle_labels
from hubcompare.errors import DatasetError, RecipeError
from hubcompare.grounding import scores
from hubcompare.grounding.pcs import RIDGE, measure_between, probe_accuracy, remove_components
from hubcompare.similarity.measures import parse_measures
from hubcompare.training.gridspec import load_grid
from hubcompare.training.loop import train
from hubcompare.training.recipes import load_recipe

from helpers import small_recipe, toy_dataset

runner = CliRunner()


# --- scores -------------------------------------------------------------------------------------
def test_spearman_matches_scipy_with_ties_and_nans(rng):
    x = rng.integers(0, 5, 40).astype(float)  # many ties
    y = x + rng.normal(0, 2, 40)
    x[3], y[7] = np.nan, np.nan
    ok = np.isfinite(x) & np.isfinite(y)
    assert scores.spearman(x, y) == pytest.approx(spearmanr(x[ok], y[ok]).statistic, abs=1e-12)
    assert math.isnan(scores.spearman(np.ones(10), np.arange(10.0)))  # constant: undefined, not 0


def test_control_auc_matches_scikit_learn(rng):
    real, mixed = rng.normal(1, 1, 12), rng.normal(0, 1, 30)
    mixed[:3] = real[:3]  # ties count half, as the AUC's
    y = np.r_[np.ones(12), np.zeros(30)]
    got = scores.control("m", real, mixed)
    assert got.score == pytest.approx(roc_auc_score(y, np.r_[real, mixed]), abs=1e-12)
    assert got.chance == 0.5 and got.count == 12 * 30


def test_specificity_counts_the_matching_layer_as_the_most_similar():
    L = 6
    peaked = -np.abs(np.subtract.outer(np.arange(L), np.arange(L))).astype(float)  # the same layer is best
    shifted = np.roll(peaked, 1, axis=1)  # every row's best is the next layer: all wrong
    assert scores.specificity("m", [peaked, peaked]).score == 1.0
    assert scores.specificity("m", [shifted]).score == 0.0
    mixed = scores.specificity("m", [peaked, shifted])
    assert mixed.score == 0.5 and mixed.chance == pytest.approx(1 / L) and mixed.count == 2 * L
    tie = peaked.copy()
    tie[0, 1] = tie[0, 0]  # a tie for the best is not a hit
    assert scores.specificity("m", [tie]).score == pytest.approx((L - 1) / L)


def test_layer_order_is_one_when_similarity_falls_with_distance_and_negative_when_it_rises():
    d = np.abs(np.subtract.outer(np.arange(7), np.arange(7))).astype(float)
    assert scores.layer_order("m", [1 - d / 10]).score == pytest.approx(1.0)
    assert scores.layer_order("m", [d]).score == pytest.approx(-1.0)


def test_pc_removal_pools_layers_so_a_measure_must_mean_the_same_change_everywhere():
    sims = [np.array([1.0, 0.5, 0.2]), np.array([1.0, 0.99, 0.98])]
    accs = [np.array([0.99, 0.98, 0.97]), np.array([0.9, 0.6, 0.3])]  # the second layer loses far more accuracy
    got = scores.pc_removal("m", sims, accs)
    want = spearmanr(np.r_[sims[0][1:], sims[1][1:]], np.r_[accs[0][1:] - 0.99, accs[1][1:] - 0.9]).statistic
    assert got.score == pytest.approx(want) and got.count == 4  # k = 0 (a layer vs itself) is left out
    assert got.score < 0  # it falls in every layer, but by amounts that say the opposite of the accuracy
    tracking = [np.array([1.0, 0.99, 0.98]), np.array([1.0, 0.7, 0.4])]
    assert scores.pc_removal("m", tracking, accs).score == pytest.approx(1.0)


def test_distance_measures_are_negated_before_scoring():
    d = np.abs(np.subtract.outer(np.arange(5), np.arange(5))).astype(float)
    assert scores.layer_order("m", [scores.as_similarity(d, "distance")]).score == pytest.approx(1.0)


def test_a_score_passes_by_its_rule_and_nan_fails():
    assert scores.Score("control", "m", 0.95, 0.5, 3).passed
    assert not scores.Score("control", "m", 0.85, 0.5, 3).passed
    assert not scores.Score("function", "m", float("nan"), 0.0, 0).passed
    assert scores.Score("function", "m", float("nan"), 0.0, 0).to_json()["score"] is None


# --- principal-component removal ----------------------------------------------------------------
def test_remove_components_matches_numpy_svd(rng):
    x = torch.from_numpy(rng.normal(size=(30, 12)) * np.linspace(5, 0.1, 12))
    xc = x - x.mean(0, keepdim=True)
    u = torch.linalg.svd(xc, full_matrices=False)[0]
    uu, s, vt = np.linalg.svd(xc.numpy(), full_matrices=False)
    for k in (0, 1, 3):
        want = (uu[:, k:] * s[k:]) @ vt[k:]  # the rank-(r - k) part: all but the top k
        assert np.allclose(remove_components(xc, u, k).numpy(), want, atol=1e-10)


def test_probe_accuracy_matches_scikit_learn_ridge_classifier(rng):
    n, p, classes = 80, 120, 4  # more features than examples, as a layer's
    labels = torch.from_numpy(rng.integers(0, classes, n))
    x = torch.from_numpy(rng.normal(size=(n, p)) + np.eye(classes)[labels.numpy()] @ rng.normal(size=(classes, p)))
    fit, test = torch.arange(0, n, 2), torch.arange(1, n, 2)
    xf = x[fit] - x[fit].mean(0)
    alpha = RIDGE * float((xf * xf).sum(1).mean())
    clf = RidgeClassifier(alpha=alpha, solver="cholesky").fit(x[fit].numpy(), labels[fit].numpy())
    want = float((clf.predict(x[test].numpy()) == labels[test].numpy()).mean())
    assert probe_accuracy(x, labels, fit, test, classes) == pytest.approx(want)
    assert want > 0.5  # a real signal: the check is not of two chance-level probes


def test_every_measure_is_at_its_maximum_between_a_layer_and_itself(rng):
    x = torch.from_numpy(rng.normal(size=(60, 20)))
    chosen = parse_measures(["cka", "rsa", "procrustes", "mknn", "svcca", "linreg", "rbf-cka"])
    for key, value in measure_between(chosen, x, x).items():
        assert value == pytest.approx(1.0, abs=1e-9), key


# --- the shuffled-label recipe key --------------------------------------------------------------
def test_shuffle_labels_permutes_the_chosen_share_keeping_class_counts():
    ds = toy_dataset(400, classes=10)
    out = shuffle_labels(ds, 0.5, seed=3)
    assert torch.equal(torch.bincount(out.labels), torch.bincount(ds.labels))  # a permutation of labels
    changed = float((out.labels != ds.labels).double().mean())
    assert 0.35 < changed <= 0.5  # half permuted, of which ~1/10 land on their own class
    assert torch.equal(out.labels, shuffle_labels(ds, 0.5, seed=3).labels)  # seeded
    assert not torch.equal(out.labels, shuffle_labels(ds, 0.5, seed=4).labels)
    assert out.fingerprint != ds.fingerprint and "shuffled_labels=0.5,seed=3" in out.split
    assert shuffle_labels(ds, 0, seed=3) is ds
    with pytest.raises(DatasetError, match=r"in \[0, 1\]"):
        shuffle_labels(ds, 1.5, seed=0)


def test_the_recipe_key_is_checked_and_hashes_as_before_at_its_default():
    plain = load_recipe("digits")
    assert load_recipe("digits", {"data.shuffle_labels": 0}).hash == plain.hash  # published hashes stay valid
    assert load_recipe("digits", {"data.shuffle_labels": 1.0}).hash != plain.hash
    with pytest.raises(RecipeError, match="data.shuffle_labels"):
        load_recipe("digits", {"data.shuffle_labels": 2})


def test_the_bundled_control_grids_name_their_runs_as_shuffled():
    spec = load_grid("digits-deep-shuffled")
    assert [p.name for p in spec.points] == [f"digits-d32-w1-f1-s{s}-shuffled1" for s in range(5)]
    assert all(p.recipe["data"]["shuffle_labels"] == 1 for p in spec.points)
    plain = load_grid("digits-deep-20seeds")
    assert plain.points[0].name == "digits-d32-w1-f1-s0"  # names of runs without the key are as before


# --- the command on a digits population ---------------------------------------------------------
@pytest.fixture(scope="module")
def population(tmp_path_factory):
    """Five ResNet-8 digits seeds and two trained on fully shuffled labels (seconds each)."""
    root = tmp_path_factory.mktemp("grounding")
    real = [train(small_recipe(**{"train.seed": s}), root / f"real-s{s}").run_dir for s in range(5)]
    control = [train(small_recipe(**{"train.seed": s, "data.shuffle_labels": 1.0}), root / f"shuffled-s{s}").run_dir
               for s in range(2)]
    return [str(p) for p in real], [str(p) for p in control]


def test_grounding_writes_the_table_figure_and_json_with_recomputable_scores(population, tmp_path):
    real, control = population
    out = tmp_path / "g"
    r = runner.invoke(app, ["grounding", "+".join(real), "+".join(control), "--measure", "cka", "--measure", "rsa",
                            "--measure", "procrustes", "--examples", "200", "--pc-steps", "3", "--pc-layers", "2",
                            "--device", "cpu", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "grounding.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["grounding.json", "grounding.md", "grounding.png"]
    assert doc["tests"] == ["specificity", "layer order", "top-pc removal", "low-pc removal", "function", "control"]
    assert [row["measure"] for row in doc["table"]] == ["cka", "rsa", "procrustes"]
    # the control model was trained on shuffled labels, and says so
    assert all(m["dataset"] == "digits" for m in doc["real"] + doc["control"])
    assert doc["settings"]["num_examples"] == 200 and doc["settings"]["num_batches"] == 1
    assert len(doc["settings"]["dataset"]["fingerprint"]) == 16
    # the function test, recomputed from the pairs the JSON lists (scipy)
    for row in doc["table"]:
        key = row["measure"]
        values = [p["values"][key] for p in doc["pairs"]]
        agreement = [p["agreement"] for p in doc["pairs"]]
        assert row["tests"]["function"]["score"] == pytest.approx(spearmanr(values, agreement).statistic, abs=1e-9)
        for test, s in row["tests"].items():
            assert s["passed"] == (s["score"] is not None and s["score"] >= scores.RULES[test][0])
        assert row["passed"] == sum(s["passed"] for s in row["tests"].values())
    kinds = [p["kind"] for p in doc["pairs"]]
    assert kinds.count("real") == 10 and kinds.count("mixed") == 10 and kinds.count("control") == 1
    # shuffled-label models agree with real ones far less often than real seeds agree with each other
    real_agree = np.mean([p["agreement"] for p in doc["pairs"] if p["kind"] == "real"])
    mixed_agree = np.mean([p["agreement"] for p in doc["pairs"] if p["kind"] == "mixed"])
    assert real_agree > mixed_agree + 0.3
    # pc removal, both ladders: nothing removed = the layer itself (each measure at its maximum); the top ladder
    # removes 0..3 components, the low-variance one keeps the top r, r/2, r/4, r/8 (r the layer's rank)
    ladders = {(p["layer"], p["end"]): p for p in doc["pc_removal"]}
    assert sorted({end for _, end in ladders}) == ["low", "top"] and len(ladders) == 4
    for (name, end), layer in ladders.items():
        assert layer["values"]["cka"][0] == pytest.approx(1.0) and layer["values"]["rsa"][0] == pytest.approx(1.0)
        assert all(0 <= a <= 1 for a in layer["accuracy"])
        rank = layer["kept"][0]
        assert all(k + r == rank for k, r in zip(layer["kept"], layer["removed"]))
        if end == "top":
            assert layer["removed"] == [0, 1, 2, 3]
        else:  # the top r, r/2, r/4, r/8 kept
            assert layer["kept"] == [max(1, rank >> j) for j in range(4)] and 8 <= rank < 200
    table = (out / "grounding.md").read_text()
    assert "| measure | specificity | layer order | top-pc removal | low-pc removal | function | control | passed |" in table
    assert "- control: pass when AUC >= 0.9 (chance 0.5)" in table


def test_grounding_without_a_control_side_says_what_it_leaves_out(population, tmp_path):
    real, _ = population
    r = runner.invoke(app, ["grounding", "+".join(real), "--measure", "cka", "--examples", "100", "--pc-steps", "2",
                            "--pc-layers", "1", "--device", "cpu", "--out", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "no control side: the control test is not scored" in text
    doc = json.loads((tmp_path / "g" / "grounding.json").read_text())
    assert doc["tests"] == ["specificity", "layer order", "top-pc removal", "low-pc removal", "function"]


def test_grounding_default_folders_never_hold_another_requests_files(population, tmp_path, monkeypatch):
    real, _ = population
    monkeypatch.chdir(tmp_path)
    base = ["grounding", "+".join(real), "--examples", "100", "--pc-steps", "2", "--pc-layers", "1", "--device", "cpu"]
    for measure in ("cka", "rsa"):
        r = runner.invoke(app, [*base, "--measure", measure])
        assert r.exit_code == 0, r.output
    folders = sorted((tmp_path / "results").iterdir())
    assert len(folders) == 2 and all(f.name.startswith("grounding-real-s0-5seeds-") for f in folders)
    assert {json.loads((f / "grounding.json").read_text())["table"][0]["measure"] for f in folders} == {"cka", "rsa"}


def test_grounding_refuses_too_few_seeds_mixed_architectures_and_a_model_on_both_sides(population, tmp_path):
    real, control = population
    r = runner.invoke(app, ["grounding", "+".join(real[:4]), "--device", "cpu", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "at least 5 seeds" in " ".join(r.output.split())
    r = runner.invoke(app, ["grounding", "+".join(real), real[0], "--device", "cpu", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "is on both sides" in " ".join(r.output.split())
    other = train(small_recipe(**{"model.depth": 14, "train.epochs": 1, "train.warmup_epochs": 0}), tmp_path / "d14")
    r = runner.invoke(app, ["grounding", "+".join(real), str(other.run_dir), "--measure", "cka", "--examples", "100",
                            "--device", "cpu", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "must be one architecture" in " ".join(r.output.split())
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # nothing half-written
