"""Linear probes: the fit against scikit-learn, pooling, the test split never choosing, streaming by layer groups,
the last layer against the model's own head, the CLI's files; and (slow) probes across a detected block."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hubcompare  # noqa: F401
from hubcompare.cli.main import app
from hubcompare.data.datasets import ImageDataset, load_dataset
from hubcompare.errors import ProbeError
from hubcompare.hub.references import resolve_reference
from hubcompare.models.predictions import stored_predictions
from hubcompare.probes.features import pool_features
from hubcompare.probes.linear import fit_softmax, probe_layers, validation_split
from hubcompare.similarity.engine import CompareModel

FAST = dict(train_examples=300, test_examples=200, l2_grid=(1e-3, 1e-2))


@pytest.fixture(scope="module")
def converged_run(tmp_path_factory):
    """A ResNet-8 trained to convergence on digits (15 epochs, ~98% test accuracy), whose head has done its fitting."""
    from helpers import small_recipe

    from hubcompare.training.loop import train

    return train(small_recipe(**{"train.epochs": 15}), tmp_path_factory.mktemp("probes") / "r8-15").run_dir


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def _model(run) -> CompareModel:
    return CompareModel.from_resolved(resolve_reference(str(run)), ref=str(run))


def test_fit_matches_scikit_learn(digits):
    """Same objective (mean cross-entropy + l2/2 ||W||^2 on the same standardised pixels): same probabilities."""
    from sklearn.linear_model import LogisticRegression

    train, test = digits
    x, y = train.images.flatten(1).float() / 255, train.labels
    xt = test.images.flatten(1).float() / 255
    l2 = 1e-2
    probe = fit_softmax(x, y, 10, l2, max_iter=1000, tolerance=1e-7)
    z, zt = ((x - probe.mean) * probe.scale).numpy(), ((xt - probe.mean) * probe.scale).numpy()
    ref = LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=5000).fit(z, y.numpy())
    ours = torch.softmax(probe.logits(xt), 1).numpy()
    assert np.abs(ours - ref.predict_proba(zt)).max() < 2e-3
    assert (ours.argmax(1) == ref.predict(zt)).mean() == 1.0


def test_pooling_is_2x2_max_and_recorded(trained_run, digits):
    act = torch.randn(3, 4, 5, 6)
    manual = act[:, :, :4, :6].reshape(3, 4, 2, 2, 3, 2).amax((3, 5))  # odd last row dropped
    assert torch.equal(pool_features(act, True), manual.reshape(3, -1))
    assert torch.equal(pool_features(act, False), act.reshape(3, -1))
    flat = torch.randn(3, 7)
    assert torch.equal(pool_features(flat, True), flat)  # not a feature map: nothing to pool
    train, test = digits
    m = _model(trained_run)
    on = probe_layers(m, train, test, pool=True, **FAST)
    off = probe_layers(m, train, test, pool=False, **FAST)
    assert on.settings["pooling"] == "2x2 max" and off.settings["pooling"] == "none"
    stem_on, stem_off = on.layer("stem"), off.layer("stem")
    assert stem_off["shape"] == stem_on["shape"] == (16, 8, 8)
    assert stem_on["probed_shape"] == (16, 4, 4) and stem_on["features"] == 256 and stem_off["features"] == 1024
    assert on.layer("pool")["features"] == off.layer("pool")["features"] == 64  # already pooled: nothing to max-pool
    assert json.loads(json.dumps(on.to_json()))["settings"]["pooling"] == "2x2 max"


def test_validation_part_is_stratified_and_disjoint():
    labels = torch.arange(200) % 10
    fit, val = validation_split(labels, 0.1, seed=3)
    assert len(set(fit.tolist()) & set(val.tolist())) == 0 and len(fit) + len(val) == 200
    assert torch.bincount(labels[val]).tolist() == [2] * 10
    again, _ = validation_split(labels, 0.1, seed=3)
    other, _ = validation_split(labels, 0.1, seed=4)
    assert torch.equal(fit, again) and not torch.equal(fit, other)


def test_test_labels_never_choose_anything(trained_run, digits):
    """Scrambled test labels change only the reported test accuracy: the L2 chosen, the validation and train
    accuracies (and so the probes) are the same, so the test split picks nothing."""
    train, test = digits
    g = torch.Generator().manual_seed(1)
    scrambled = ImageDataset(test.name, test.split, test.images, test.labels[torch.randperm(len(test), generator=g)],
                             test.classes, test.ids)
    m = _model(trained_run)
    a = probe_layers(m, train, test, **FAST)
    b = probe_layers(m, train, scrambled, **FAST)
    for ra, rb in zip(a.layers, b.layers):
        assert ra["validation_path"] == rb["validation_path"] and ra["chosen_l2"] == rb["chosen_l2"]
        assert ra["train_accuracy"] == rb["train_accuracy"]
    assert max(a.test_accuracy) > 0.8 and max(b.test_accuracy) < 0.3  # what was reported did change
    v = a.settings["validation"]
    assert v["fit_examples"] + v["validation_examples"] == a.settings["train"]["num_examples"] == 300
    assert a.settings["train"]["split"].startswith("train")


def test_layer_groups_stream_the_same_probes(trained_run, digits):
    """Features held a few layers at a time (a small memory budget) give the very same probes as all at once."""
    train, test = digits
    m = _model(trained_run)
    whole = probe_layers(m, train, test, **FAST)
    grouped = probe_layers(m, train, test, max_feature_bytes=2 * 4 * 500 * 1024, **FAST)
    assert whole.settings["layer_groups"] == 1 and grouped.settings["layer_groups"] >= 3
    assert whole.rows() == grouped.rows()
    with pytest.raises(ProbeError, match="stem has 1,024 features.*pool.*train_examples"):
        probe_layers(m, train, test, max_feature_bytes=1 << 20, **FAST)


def test_probe_layers_follow_the_taps(trained_run, digits):
    """A hubcompare ResNet is probed on its stem, each residual branch (before the add), each block output (after it)
    and the pooled features, in forward order, with its stage boundaries."""
    train, test = digits
    r = probe_layers(_model(trained_run), train, test, **FAST)
    assert r.names == ["stem", "stage1.block1.branch", "stage1.block1.out", "stage2.block1.branch", "stage2.block1.out",
                       "stage3.block1.branch", "stage3.block1.out", "pool"]
    assert [x["kind"] for x in r.layers][:3] == ["stem", "branch", "out"] and r.boundaries == [1, 3, 5, 7]
    stored = stored_predictions(resolve_reference(str(trained_run)).checkpoint)  # the head's own, from training
    assert r.model_test_accuracy == pytest.approx(float(stored.correct[:200].float().mean()))  # on the same 200 examples
    assert all(0 <= a <= 1 for a in r.test_accuracy) and max(r.test_accuracy) > 0.8


def test_last_layer_probe_matches_the_models_accuracy(converged_run, digits):
    """The probe on the pooled features (what the model's own linear head sees), fit on all 1,297 training images,
    is within 2 points of a converged head's test accuracy. Measured (ResNet-8, 15 epochs, seeds 0-2): probe 0.988,
    0.992, 0.990 vs head 0.980, 0.980, 0.984 (+0.8, +1.2, +0.6 points)."""
    train, test = digits
    m = CompareModel.from_resolved(resolve_reference(str(converged_run)), layers=["pool"])
    r = probe_layers(m, train, test, l2_grid=(1e-3, 1e-2))
    assert r.model_test_accuracy == m.provenance["test_accuracy"] > 0.95
    assert abs(r.layer("pool")["test_accuracy"] - r.model_test_accuracy) < 0.02, (r.layers, r.model_test_accuracy)


def test_cli_writes_json_csv_figure(trained_run, tmp_path):
    out = tmp_path / "p"
    r = CliRunner().invoke(app, ["probes", str(trained_run), "--train-examples", "200", "--examples", "100", "--l2", "0.01",
                                 "--blocks", "none", "--pool", "--out", str(out), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["settings"]["pooling"] == "2x2 max" and data["settings"]["l2_grid"] == [0.01]
    assert data["model"]["test_accuracy"] and data["settings"]["train"]["fingerprint"]
    assert data["settings"]["blocks"] == {"source": "none"}
    csv = (out / "probes.csv").read_text().splitlines()
    assert csv[0].startswith("index,name,stage,kind,features") and len(csv) == 1 + len(data["layers"])
    assert (out / "probes.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "probes.json").read_text())["layers"] == data["layers"]
    # the printed sentence, from the stored result: no block was looked for, so no claim about blocks
    from hubcompare.comparisons.probe_kinds import probe_result_from_json
    from hubcompare.probes.summary import probe_sentence

    r = CliRunner().invoke(app, ["probes", str(trained_run), "--train-examples", "200", "--examples", "100", "--l2", "0.01",
                                 "--blocks", "none", "--pool", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert probe_sentence(probe_result_from_json(data)) in flat and "No blocks were given" in flat


def _gain_across(result, names):
    """Probe test accuracy at the last of ``names`` minus at the first (the gain across those layers)."""
    return result.layer(names[-1])["test_accuracy"] - result.layer(names[0])["test_accuracy"]


@pytest.mark.slow
def test_probes_gain_little_inside_a_block(block_models, digits):
    """Inside a detected block the probes' accuracy does not rise; in a no-block ResNet-20 it does; and the last
    layer's probe is the model's own accuracy.

    Probes 2x2-pooled, fit on 200 training images (class-stratified; with all 1,297 every layer scores 98-99%: digits
    are nearly linearly separable from the pixels), the default L2 grid. Measured on the plain-loop models of
    ``block_models`` (ResNet-56 2x seeds 0-2, blocks from stage1.block4/8.out to stage3.block6/8.out; ResNet-20 1x
    seeds 0-2, no block): across the block (first to last block output in it) -0.012, -0.022, -0.006; the largest
    rise above the block's first layer anywhere inside it +0.018, +0.006, +0.002. ResNet-20, stem to last block
    output: +0.036, +0.042, +0.042. Last layer (pool, probe fit on all training images) minus the model's own
    accuracy: +0.002, +0.012, +0.026 (ResNet-56 2x), 0.000, +0.008, +0.006 (ResNet-20). So: across every block
    < +0.01, the ResNet-20's rise > +0.02, and the last layer within 0.03 of the model.
    """
    train, test = digits
    deep = [r for r in block_models["deep"] if r.get("blocks") and r["test_accuracy"] > 0.9]
    assert deep, block_models["deep"]
    for rec in deep:
        r = probe_layers(_model(rec["checkpoint"]), train, test, pool=True, train_examples=200)
        for b in rec["blocks"]:
            assert _gain_across(r, b["names"]) < 0.01, (rec["seed"], b["names"][0], b["names"][-1], r.test_accuracy)
    shallow = _model(block_models["shallow"]["checkpoint"])
    r = probe_layers(shallow, train, test, pool=True, train_examples=200)
    assert _gain_across(r, ["stem", "stage3.block3.out"]) > 0.02, r.test_accuracy
    for rec in [*deep, block_models["shallow"]]:
        m = CompareModel.from_resolved(resolve_reference(rec["checkpoint"]), layers=["pool"])
        last = probe_layers(m, train, test)
        assert abs(last.layers[0]["test_accuracy"] - last.model_test_accuracy) < 0.03, (rec["seed"], last.layers)
