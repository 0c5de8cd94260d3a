"""End to end on digits: two small populations trained, pushed to the local hub, pulled as populations, compared."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from helpers import one_epoch_recipe
from scipy import stats as sps
from typer.testing import CliRunner

from hubcompare.cli import app
from hubcompare.models.predictions import stored_predictions
from hubcompare.populations.wording import small_null_note

runner = CliRunner()
NARROW, WIDE = (21, 22, 23, 24), (31, 32)


@pytest.fixture(scope="module")
def populations(tmp_path_factory, hub):
    from huggingface_hub import HfApi

    from hubcompare.hub.client import push_population
    from hubcompare.training.loop import train

    root = tmp_path_factory.mktemp("pops")
    runs = {"narrow": [], "wide": []}
    for name, width, seeds in (("narrow", 1, NARROW), ("wide", 2, WIDE)):
        for s in seeds:
            out = root / f"{name}-s{s}"
            train(one_epoch_recipe(s, **{"model.width": width, "data.fraction": "1/4"}), out)
            runs[name].append(out)
    pushed = {name: push_population(dirs, f"e2e-{name}", "erin", workers=2, api=HfApi()) for name, dirs in runs.items()}
    assert not any(p.failures for p in pushed.values())
    return runs, pushed


def _stored(run_dirs):
    from hubcompare.models.checkpoint import load_checkpoint

    preds = [stored_predictions(load_checkpoint(d)) for d in run_dirs]
    return np.stack([p.correct.numpy() for p in preds]), preds[0].labels.numpy()


def test_agreement_and_class_diff_on_pushed_populations(populations, tmp_path):
    from hubcompare.hub.registry import Registry, sync

    runs, pushed = populations
    out = tmp_path / "agree"
    r = runner.invoke(app, ["agreement", "hf-tag:population-e2e-narrow", f"collection:{pushed['wide'].collection_slug}",
                            "--splits", "200", "--permutations", "200", "--seed", "7", "--label-a", "narrow", "--label-b", "wide",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "permutation test" in r.output and "outside" in r.output
    flat = " ".join(r.output.split())  # 4 models on the null's side: halves of 2, said beside the null's line and warned
    assert "too few models for this null to carry weight: halves of 2" in flat and "the null is too small to carry weight" in flat
    res = json.loads((out / "agreement.json").read_text())
    assert res["summary"]["null"]["too_small"] is True and any("too small to carry weight" in w for w in res["warnings"])
    assert small_null_note(res["summary"]["null"], "agreement") in flat  # names its outside count, p-value and expectation
    ca, labels = _stored(runs["narrow"])
    cb, _ = _stored(runs["wide"])
    s = res["summary"]
    assert s["models"] == {"a": 4, "b": 2}
    assert s["mean_accuracy"]["a"] == pytest.approx(ca.mean(), abs=1e-12)
    assert s["mean_abs_per_example_difference"] == pytest.approx(np.abs(ca.mean(0) - cb.mean(0)).mean(), abs=1e-12)
    prov = res["provenance"]
    shas = {p.repo_id: p.commit_sha for pop in pushed.values() for p in pop.pushed}
    for side in ("side_a", "side_b"):
        for m in prov[side]["models"]:
            repo = m["resolved"].split(":", 1)[1].split("@")[0]
            assert m["commit_sha"] == shas[repo] and m["resolved"].endswith("@" + shas[repo]) and m["predictions"] == "stored"
    assert prov["dataset"]["name"] == "digits" and len(prov["dataset"]["fingerprint"]) == 16
    assert prov["random"]["seed"] == 7 and prov["settings"]["splits"] == 200
    assert len(prov["random"]["example_split"]["first_half"]) == 2
    with open(out / "agreement.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 500 and {"id", "accuracy_a", "accuracy_b", "null_band_lo", "outside_band"} <= set(rows[0])
    assert (out / "agreement.png").stat().st_size > 10_000

    # the same populations through the registry (synced from the Hub, pinned to each sha)
    sync(Registry(), "erin")
    out = tmp_path / "classes"
    r = runner.invoke(app, ["class-diff", "population:e2e-narrow", "registry:population=e2e-wide,width=2", "--splits", "200",
                            "--out", str(out), "--format", "pdf"])
    assert r.exit_code == 0, r.output
    assert "Welch" in r.output and "classes significant" in r.output
    # sides named by their models' card name (they differ in width); the table says A and B, so it fits 80 columns
    assert "A = ResNet-8 (1x)" in r.output and "B = ResNet-8 (2x)" in r.output and "…" not in r.output
    assert all(len(line) <= 80 for line in r.output.splitlines() if "acc A" in line or line[:2].strip().isdigit())
    res = json.loads((out / "class_diff.json").read_text())
    assert res["side_a"] == "ResNet-8 (1x)" and res["provenance"]["side_a"]["spec"] == "population:e2e-narrow"
    assert (out / "class_diff.pdf").read_bytes().startswith(b"%PDF")
    k = 10
    xa = np.stack([[c[labels == j].mean() for j in range(k)] for c in ca])
    xb = np.stack([[c[labels == j].mean() for j in range(k)] for c in cb])
    ref = sps.ttest_ind(xa, xb, axis=0, equal_var=False)
    for row in res["classes"]:
        j = row["index"]
        assert row["class"] == str(j)  # digits' class names
        if row["p"] is not None:
            assert row["p"] == pytest.approx(ref.pvalue[j], abs=1e-10) and row["t"] == pytest.approx(ref.statistic[j], abs=1e-10)
    assert res["summary"]["null"]["side"] == "ResNet-8 (1x)"  # population:e2e-narrow, 4 models: halves of 2
    assert res["summary"]["null"]["too_small"] is True and "too few models for this null" in " ".join(r.output.split())
    # class-diff has no outside count: its note points at the per-class tests
    assert small_null_note(res["summary"]["null"], "class-diff") in " ".join(r.output.split()) and "outside count" not in r.output
    assert all(m["registry_name"].startswith("erin--") for m in res["provenance"]["side_a"]["models"])
    assert (out / "class_diff.csv").is_file()

    r = runner.invoke(app, ["agreement", "population:e2e-narrow", "population:e2e-wide", "--splits", "50", "--permutations", "50",
                            "--out", str(tmp_path / "json"), "--json"])
    assert r.exit_code == 0, r.output
    printed, written = json.loads(r.stdout), json.loads((tmp_path / "json" / "agreement.json").read_text())
    assert printed["summary"] == written["summary"] and printed["side_a"] == "ResNet-8 (1x)"
    assert printed["files"][-1] == str(tmp_path / "json" / "agreement.png") and "Wrote 3 files" in r.stderr


def test_models_without_predictions_are_computed_once_and_cached(populations, tmp_path):
    from hubcompare.models.checkpoint import CONFIG_FILE

    runs, _ = populations
    bare = shutil.copytree(runs["wide"][0], tmp_path / "bare")
    (bare / "predictions.safetensors").unlink()
    config = json.loads((bare / CONFIG_FILE).read_text())
    config["hubcompare"].pop("predictions")
    (bare / CONFIG_FILE).write_text(json.dumps(config))
    side_b = f"{bare}+{runs['wide'][1]}"
    cache = tmp_path / "cache"
    for expected in ("computed", "cache"):
        out = tmp_path / expected
        r = runner.invoke(app, ["agreement", f"{runs['narrow'][0]}+{runs['narrow'][1]}", side_b, "--cache-dir", str(cache),
                                "--splits", "50", "--permutations", "50", "--out", str(out),
                                *(["--recompute"] if expected == "cache" else [])])  # (else the stored result answers)
        assert r.exit_code == 0, r.output
        models = json.loads((out / "agreement.json").read_text())["provenance"]["side_b"]["models"]
        assert [m["predictions"] for m in models] == [expected, "stored"]
    assert len(list(cache.glob("*.safetensors"))) == 1
    # the computed predictions are the stored ones of the same weights
    with open(tmp_path / "cache" / "agreement.csv") as f:
        rows = list(csv.DictReader(f))
    cb, _ = _stored(runs["wide"][:2])
    assert np.allclose([float(r["accuracy_b"]) for r in rows], cb.mean(0))


def test_population_errors(populations, tmp_path):
    from hubcompare.models.checkpoint import CONFIG_FILE
    from hubcompare.models.predictions import Predictions

    runs, _ = populations
    r = runner.invoke(app, ["class-diff", str(runs["narrow"][0]), f"{runs['wide'][0]}+{runs['wide'][1]}"])
    assert r.exit_code == 2 and "at least 2 models per side" in r.output and "has 1" in r.output
    r = runner.invoke(app, ["agreement", "population:no-such-pop", str(runs["wide"][0])])
    assert r.exit_code == 2 and "EmptyPopulationError" in r.output
    # predictions about other examples (ids reordered) are refused, not silently misaligned
    moved = shutil.copytree(runs["narrow"][1], tmp_path / "moved")
    p = Predictions.load(moved / "predictions.safetensors")
    order = np.arange(len(p.ids))[::-1].copy()
    p = Predictions(p.logits[order], p.labels[order], [p.ids[i] for i in order], dict(p.dataset, fingerprint="ffffffffffffffff"))
    config = json.loads((moved / CONFIG_FILE).read_text())
    config["hubcompare"]["predictions"] = p.save(moved / "predictions.safetensors")
    (moved / CONFIG_FILE).write_text(json.dumps(config))
    r = runner.invoke(app, ["agreement", f"{runs['narrow'][0]}+{moved}", str(runs["wide"][0])])
    assert r.exit_code == 2 and "DatasetMismatchError" in r.output and "--dataset" in r.output
    r = runner.invoke(app, ["agreement", str(moved), str(runs["wide"][0])])
    assert r.exit_code == 2 and "not about the same examples" in r.output
