"""Across seeds (``hubcompare across-seeds``, ``cross-cka`` given population sides): every seed pair's CKA at matching
layers from one pass, checked against separate pairwise ``compare`` runs; inside/outside classes; sides of one model;
population:NAME sides through the test Hub; Ray shards equal to one process. The slow test reproduces the paper's
finding on ResNet-56 (2x) seeds that grow blocks."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from helpers import one_epoch_recipe
from typer.testing import CliRunner

from hubcompare.cli.main import app
from hubcompare.errors import ComparisonTooLargeError, OverlappingSidesError, SideArchitectureError
from hubcompare.hub.references import resolve_reference
from hubcompare.populations.seeds import CLASSES, Stat, across_seeds, class_stats
from hubcompare.similarity.blocks import BlockCriteria
from hubcompare.similarity.engine import CompareModel, compare, comparison_dataset

runner = CliRunner()
SEEDS_A, SEEDS_B = (0, 1, 2), (0, 1)  # ResNet-8 (1x) and ResNet-14 (1x), one epoch on 1/4 of digits
BATCH, EXAMPLES, PC = 25, 100, 50  # 4 minibatches of 25: seconds


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
    from hubcompare.training.loop import train

    root = tmp_path_factory.mktemp("seeds")
    runs = {"a": [], "b": []}
    for key, depth, seeds in (("a", 8, SEEDS_A), ("b", 14, SEEDS_B)):
        for s in seeds:
            out = root / f"r{depth}-s{s}"
            train(one_epoch_recipe(s, **{"model.depth": depth, "data.fraction": "1/4"}), out)
            runs[key].append(out)
    return runs


def _models(paths, layers=None):
    return [CompareModel.from_resolved(resolve_reference(str(p)), layers, ref=str(p)) for p in paths]


@pytest.fixture(scope="module")
def result(seed_runs):
    ma, mb = _models(seed_runs["a"]), _models(seed_runs["b"])
    ds = comparison_dataset(ma + mb)
    return across_seeds(ma, mb, ds, BATCH, 1, 0, EXAMPLES, label_a="r8", label_b="r14", pc_examples=PC), ds


def test_per_layer_numbers_are_the_pairwise_compare_results(seed_runs, result):
    r, ds = result
    layers = ["stem", "*.out"]
    assert r.a.layers == ["stem", "stage1.block1.out", "stage2.block1.out", "stage3.block1.out"]
    assert len(r.b.layers) == 7
    # across architectures: ResNet-8's layer i (of 4) meets ResNet-14's at the same relative depth i/3 of 6
    assert r.sets["across_on_a"].match.tolist() == [0, 2, 4, 6]
    assert r.sets["across_on_b"].match.tolist() == [0, 0, 1, 2, 2, 2, 3]  # j * 3/6, ties to even (numpy.rint)
    a, b = seed_runs["a"], seed_runs["b"]
    for name, p, (x, y) in (("within_a", 1, (a[0], a[2])), ("within_b", 0, (b[0], b[1])), ("across_on_a", 3, (a[1], b[1])),
                            ("across_on_b", 3, (b[1], a[1]))):
        ps = r.sets[name]
        assert ps.pairs[p] == (str(x), str(y))
        # the same pair on its own: a separate pass of two models
        own = compare(_models([x, y], layers), ds, batch_size=BATCH, num_examples=EXAMPLES).pair(0, 1)
        np.testing.assert_allclose(ps.values[p], own.value[np.arange(len(ps.match)), ps.match], rtol=0, atol=1e-10)
        np.testing.assert_allclose(ps.se[p], own.se[np.arange(len(ps.match)), ps.match], rtol=0, atol=1e-10)
    within_a = r.sets["within_a"].values
    assert within_a.shape == (3, 4) and r.sets["across_on_a"].values.shape == (6, 4)
    rows = [x for x in r.layer_rows() if x["side"] == "a"]
    for layer, row in enumerate(rows):
        assert row["within_mean"] == pytest.approx(within_a[:, layer].mean(), abs=1e-12)
        assert row["within_sd"] == pytest.approx(within_a[:, layer].std(ddof=1), abs=1e-12)
        assert row["within_n"] == 3 and row["across_n"] == 6
    # no block in one-epoch ResNet-8/14: every value is outside
    assert all(not any(b) for b in r.a.blocks + r.b.blocks)
    assert r.summary()["within_a"]["outside"]["n"] == 12 and r.summary()["within_a"]["inside"]["n"] == 0


def test_other_measures_get_the_same_pair_sets_from_the_same_pass(seed_runs, result, tmp_path):
    """--measure: each extra measure's pair sets are that measure between the same layers a separate compare of the
    pair computes (an asymmetric one with the first model's layer as the row), classed like CKA's; CKA's numbers do
    not move; the JSON carries them and reads back; the CLI prints a table per measure and stores them in the key."""
    from hubcompare.similarity.measures import parse_measures

    base, ds = result
    ma, mb = _models(seed_runs["a"]), _models(seed_runs["b"])
    chosen = parse_measures(["procrustes", "linreg"])
    r = across_seeds(ma, mb, ds, BATCH, 1, 0, EXAMPLES, label_a="r8", label_b="r14", pc_examples=PC, measures=chosen)
    for name, ps in r.sets.items():  # CKA unchanged by the company it keeps
        np.testing.assert_array_equal(ps.values, base.sets[name].values)
    assert list(r.measures) == ["procrustes", "linreg"]
    a, b = seed_runs["a"], seed_runs["b"]
    layers = ["stem", "*.out"]
    for key in ("procrustes", "linreg"):
        sets = r.measures[key]["pair_sets"]
        for name, p, (x, y) in (("within_a", 1, (a[0], a[2])), ("across_on_b", 3, (b[1], a[1]))):
            assert sets[name]["pairs"][p] == [str(x), str(y)]
            own = compare(_models([x, y], layers), ds, batch_size=BATCH, num_examples=EXAMPLES, measures=chosen)
            value, se = own.measure_pair(key, 0, 1)
            match = np.array(sets[name]["matched_layer"])
            np.testing.assert_allclose(sets[name]["value"][p], value[np.arange(len(match)), match], rtol=0, atol=1e-9)
            assert sets[name]["class"] == r.sets[name].klass.tolist()
        outside = r.measures[key]["summary"]["within_a"]["outside"]
        assert outside["n"] == 12 and outside["mean"] == pytest.approx(np.mean(sets["within_a"]["value"]), abs=1e-12)
    doc = json.loads(json.dumps(r.to_json(), allow_nan=True))
    from hubcompare.comparisons.seed_kinds import seeds_result_from_json

    assert seeds_result_from_json(doc).to_json()["measures"] == doc["measures"]
    assert "measures" not in base.to_json()  # without --measure the document is as before

    home = {"HUBCOMPARE_HOME": str(tmp_path / "home"), "HUBCOMPARE_REGISTRY_DIRS": ""}
    side_a, side_b = "+".join(map(str, a)), "+".join(map(str, b))
    args = ["across-seeds", side_a, side_b, "--batch-size", str(BATCH), "--examples", str(EXAMPLES), "--pc-examples",
            str(PC), "--device", "cpu", "--measure", "rsa", "--out", str(tmp_path / "out")]
    printed = runner.invoke(app, args, env=home, terminal_width=200)
    assert printed.exit_code == 0, printed.output
    assert "rsa over (pair, layer) values" in printed.stdout and "CKA over (pair, layer) values" in printed.stdout
    stored = json.loads((tmp_path / "out" / "across_seeds.json").read_text())
    assert list(stored["measures"]) == ["rsa"]
    again = runner.invoke(app, [*args, "--json"], env=home)
    assert json.loads(again.stdout)["from_store"] is True
    other = runner.invoke(app, [*args[:-2], "--out", str(tmp_path / "other"), "--json"], env=home)
    plain = runner.invoke(app, [a for a in args if a not in ("--measure", "rsa")][:-2] + ["--out", str(tmp_path / "p"), "--json"],
                          env=home)
    assert json.loads(other.stdout)["result_key"] == json.loads(again.stdout)["result_key"] != json.loads(plain.stdout)["result_key"]
    bad = runner.invoke(app, [*args[:-2], "--measure", "cca", "--out", str(tmp_path / "bad")], env=home)
    assert bad.exit_code != 0 and "not a measure" in bad.output and "Traceback" not in bad.output


def test_outputs_carry_provenance(result, tmp_path):
    from hubcompare.populations.seed_plots import plot_across_seeds

    r, ds = result
    json_path, csv_path = r.save(tmp_path)
    png = plot_across_seeds(r, tmp_path / "across_seeds.png")
    assert png.stat().st_size > 20_000
    saved = json.loads(json_path.read_text())
    prov = saved["provenance"]
    assert prov["dataset"]["fingerprint"] == ds.fingerprint and prov["batch_size"] == BATCH and prov["num_examples"] == EXAMPLES
    assert [m["ref"] for m in prov["sides"]["a"]["models"]] == r.a.refs
    assert all(m["resolved"].startswith("local-dir:") and m["weights_sha256"] for m in prov["sides"]["b"]["models"])
    assert "relative depth" in prov["layer_matching"] and prov["block_detection"]["pc1_threshold"] == 0.5
    assert len(saved["pair_sets"]["across_on_b"]["cka"]) == 6
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 + 7 and float(rows[0]["within_mean"]) == pytest.approx(r.layer_rows()[0]["within_mean"])


def test_blocks_decide_inside_and_outside(seed_runs, result):
    r, ds = result
    # unit: a pair's class counts its two layers inside their model's block
    inside = np.array([[True, True, False], [False, True, False]])
    k = class_stats(np.zeros((1, 3)), inside, inside, [(0, 1)], np.arange(3))
    assert k.tolist() == [[1, 2, 0]]
    # end to end: criteria every layer run passes make each model's whole range one block: every value is inside
    ma, mb = _models(seed_runs["a"][:2]), _models(seed_runs["b"][:1])
    loose = BlockCriteria(pc1_threshold=0.0, cka_threshold=-1.0, min_size=2, max_gap=0, min_mean_pc1=0.0)
    rl = across_seeds(ma, mb, ds, BATCH, 1, 0, EXAMPLES, pc_examples=PC, criteria=loose)
    assert all(len(b) == 1 and b[0].start == 0 for b in rl.a.blocks + rl.b.blocks)
    s = rl.summary()
    for name in rl.sets:
        assert s[name]["outside"]["n"] == s[name]["partly"]["n"] == 0 and s[name]["inside"]["n"] == rl.sets[name].values.size
    assert set(CLASSES) == {"outside", "partly", "inside"}
    assert Stat.of([np.nan]).n == 0 and np.isnan(Stat.of([1.0]).sd)


def test_one_model_side_and_bad_sides(seed_runs, result):
    r, ds = result
    ma, mb = _models(seed_runs["a"][:1]), _models(seed_runs["b"])
    one = across_seeds(ma, mb, ds, BATCH, 1, 0, EXAMPLES, pc_examples=PC)
    assert one.sets["within_a"].values.shape == (0, 4)
    row = one.layer_rows()[0]
    assert row["within_n"] == 0 and np.isnan(row["within_mean"]) and row["across_n"] == 2
    assert any("one model" in w and "NaN" in w for w in one.warnings)
    with pytest.raises(SideArchitectureError, match="mixes architectures"):
        across_seeds(_models([seed_runs["a"][0], seed_runs["b"][0]]), _models(seed_runs["b"][1:]), ds, BATCH, 1, 0, EXAMPLES)
    with pytest.raises(OverlappingSidesError, match="same model"):
        across_seeds(_models(seed_runs["a"][:2]), _models(seed_runs["a"][1:]), ds, BATCH, 1, 0, EXAMPLES)
    with pytest.raises(ComparisonTooLargeError, match="fewer layers.*fewer models"):
        across_seeds(_models(seed_runs["a"]), _models(seed_runs["b"]), ds, BATCH, 1, 0, EXAMPLES, max_bytes=1 << 14)


def test_cli_on_population_sides_through_the_hub(seed_runs, hub, tmp_path):
    from huggingface_hub import HfApi

    from hubcompare.hub.client import push_population
    from hubcompare.hub.registry import Registry, sync

    for key, name in (("a", "seeds-r8"), ("b", "seeds-r14")):
        assert not push_population(seed_runs[key], name, "frank", workers=2, api=HfApi()).failures
    sync(Registry(), "frank")
    out = tmp_path / "pop"
    r = runner.invoke(app, ["across-seeds", "population:seeds-r8", "population:seeds-r14", "--examples", "100",
                            "--batch-size", "25", "--pc-examples", "50", "--out", str(out), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    assert printed["summary"]["models"] == {"a": 3, "b": 2} and printed["sides"]["a"]["label"] == "ResNet-8 (1x)"
    shas = [m["commit_sha"] for m in printed["provenance"]["sides"]["a"]["models"]]
    assert all(s and len(s) == 40 for s in shas)
    assert {p.name for p in out.iterdir()} == {"across_seeds.json", "across_seeds.csv", "across_seeds.png"}
    # the same through cross-cka: population sides dispatch to the same computation (same numbers)
    a, b = "+".join(map(str, seed_runs["a"][:2])), str(seed_runs["b"][0])
    r = runner.invoke(app, ["cross-cka", a, b, "--examples", "100", "--batch-size", "25", "--out", str(tmp_path / "x"),
                            "--device", "cpu", "--label", "deep", "--label", "wide"])
    assert r.exit_code == 0, r.output
    flat = " ".join(re.sub(r"[│┃━─┏┓┗┛┡┩└┘┌┐╇╈┳┻┼╋]", " ", r.output).split())
    assert "deep: 2 models, 0 with a block" in flat and "wide: 1 model," in flat
    local = json.loads((tmp_path / "x" / "across_seeds.json").read_text())
    assert local["sides"]["a"]["label"] == "deep" and local["sides"]["b"]["label"] == "wide"
    assert local["summary"]["models"] == {"a": 2, "b": 1} and local["summary"]["pairs"]["within_a"] == 1
    # the line under the tables is the summary's: here neither side's models have a block, so no inside/outside claim
    from hubcompare.populations.wording import seeds_sentence

    said = seeds_sentence(local["summary"], "deep", "wide")
    assert said in flat and (said.startswith("No model has a block") == (not any(local["summary"]["models_with_a_block"].values())))
    # the pass is the same computation: the pair (r8 s0, r14 s0) has the numbers the population run printed
    np.testing.assert_allclose(local["pair_sets"]["across_on_a"]["cka"][0], printed["pair_sets"]["across_on_a"]["cka"][0],
                               atol=1e-10)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow  # Ray tasks for every pair (~7 s); test_cka_sharding keeps sharding in the fast lane
def test_ray_shards_equal_one_process(seed_runs, result, local_ray, one_thread):
    from hubcompare.similarity.distributed import RayShards

    r, ds = result
    ma, mb = _models(seed_runs["a"]), _models(seed_runs["b"])
    one = across_seeds(ma, mb, ds, BATCH, 1, 0, EXAMPLES, pc_examples=PC)  # one thread here, as each worker below
    with RayShards(workers=2, threads=1) as shards:
        sharded = across_seeds(ma, mb, ds, BATCH, 1, 0, EXAMPLES, pc_examples=PC, compare_fn=shards.compare)
    assert sharded.provenance["backend"]["shards"] == 2
    for name in one.sets:
        np.testing.assert_allclose(sharded.sets[name].values, one.sets[name].values, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sharded.sets[name].se, one.sets[name].se, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_outside_the_block_is_shared_across_seeds_inside_it_is_not(block_models):
    """The paper's finding 5 on digits ResNet-56 (2x) seeds 0-2, which grow blocks, against a no-block ResNet-20 (1x):
    the session fixture ``block_models`` trains them (~6 min on 2 cores, hence slow). Within the deep seeds, layers
    outside both models' blocks are more similar than layers inside both; across architectures, a deep layer outside
    its block matches the shallow model better than one inside it. Measured on these seeds (batch 64, the test split):
    within the deep seeds, mean CKA 0.71 +- 0.20 outside both blocks (15 layer pairs) vs 0.34 +- 0.31 inside both (57);
    deep vs shallow, 0.72 +- 0.18 for deep layers outside the block (21) vs 0.34 +- 0.12 inside it (63): gaps of 0.37.
    The threshold, a gap of 0.2, leaves room for a seed whose block is smaller; a model with no block shared (gap ~0)
    fails it."""
    deep = _models([r["checkpoint"] for r in block_models["deep"] if "error" not in r])
    shallow = _models([block_models["shallow"]["checkpoint"]])
    r = across_seeds(deep, shallow, comparison_dataset(deep + shallow), 64, 1, 0, label_a="ResNet-56 2x", label_b="ResNet-20")
    s = r.summary()
    assert s["models_with_a_block"]["a"] >= 2 and s["models_with_a_block"]["b"] == 0
    within, across = s["within_a"], s["across_on_a"]
    assert within["outside"]["n"] and within["inside"]["n"]
    assert within["outside"]["mean"] - within["inside"]["mean"] >= 0.2, within
    assert across["outside"]["mean"] - across["partly"]["mean"] >= 0.2, across
