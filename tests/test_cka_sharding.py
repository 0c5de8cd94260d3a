"""Sharded CKA (``--backend ray``): the minibatch plan split over real local Ray workers (``ray.init(num_cpus=2)``),
each loading the models itself from their references, gives the numbers of one process: values and jackknife
standard errors to 1e-12 (with the same torch thread count per worker they are the same bits)."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch
from helpers import free_port, one_epoch_recipe
from typer.testing import CliRunner

from hubcompare.cli.main import app
from hubcompare.errors import CompareBackendError, CompareError, ReferenceNotFoundError
from hubcompare.hub.references import resolve_reference
from hubcompare.similarity.cka import MinibatchCKA, u_center
from hubcompare.similarity.distributed import ModelSource, RayShards, compare_sharded, shard_bounds
from hubcompare.similarity.engine import CompareModel, compare, comparison_dataset

runner = CliRunner()
TOL = 1e-12


@pytest.fixture(scope="module")
def second_run(tmp_path_factory):
    """Another digits checkpoint (ResNet-8, one epoch, seed 1): a model unlike ``trained_run``."""
    from hubcompare.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "digits-r8-s1"
    train(one_epoch_recipe(1), out)
    return out


@pytest.fixture
def one_thread():
    """torch on one thread here, as each sharded worker runs below (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _models(*refs: str, layers=None) -> list[CompareModel]:
    return [CompareModel.from_resolved(resolve_reference(r), layers, ref=r) for r in refs]


# --- no Ray needed ------------------------------------------------------------------------------
def test_contributions_added_in_order_are_the_same_bits_as_updates():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(5, 12, 7, generator=g, dtype=torch.float64) for _ in range(5)]  # 5 layers, 5 batches of 12
    grams = [torch.stack([u_center(x @ x.T) for x in f]) for f in feats]
    one = MinibatchCKA(5)
    for u in grams:
        one.update(u)
    merged = MinibatchCKA(5)
    shards = [[MinibatchCKA.contribution(u) for u in grams[:2]], [MinibatchCKA.contribution(u) for u in grams[2:]]]
    for h in shards[0] + shards[1]:
        merged.add(h, 12)
    a, b = one.compute(), merged.compute()
    assert torch.equal(a.value, b.value) and torch.equal(a.se, b.se) and a.num_examples == b.num_examples == 60
    with pytest.raises(CompareError, match="float64 matrix"):
        merged.add(torch.zeros(4, 4, dtype=torch.float64), 12)


def test_shard_bounds_cover_the_plan_in_order():
    assert shard_bounds(16, 2) == [(0, 8), (8, 16)]
    assert shard_bounds(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert shard_bounds(3, 8) == [(0, 1), (1, 2), (2, 3)]  # never an empty shard
    assert shard_bounds(5, 1) == [(0, 5)]


def test_a_model_without_a_reference_cannot_be_sharded(trained_run):
    (m,) = _models(str(trained_run))
    source = ModelSource.of(m)
    assert source.ref == f"local-dir:{trained_run.resolve()}" and source.layers is None
    with pytest.raises(CompareBackendError, match="from its reference"):
        ModelSource.of(CompareModel("in-memory", m.model))


def test_a_bad_ray_address_is_one_fast_typed_error(trained_run, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.perf_counter()
    with pytest.raises(CompareBackendError, match=f"cannot start or reach Ray at {address}") as e:
        RayShards(address)
    assert e.value.params == ("ray_address",)
    r = runner.invoke(app, ["cka", str(trained_run), "--backend", "ray", "--ray-address", address, "--out", str(tmp_path)])
    assert r.exit_code == 2 and time.perf_counter() - started < 10, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error (CompareBackendError)") and "--ray-address" in lines[0], r.output


# --- real local Ray ---------------------------------------------------------------------------------
def test_sharded_cka_equals_one_process(local_ray, trained_run, second_run, one_thread):
    """Three models (one twice under two references), 16 minibatches over 2 shards of one thread each."""
    models = _models(str(trained_run), str(second_run), f"local-dir:{trained_run}")
    ds = comparison_dataset(models)
    single = compare(models, ds, batch_size=64, passes=2, seed=3)
    seen = []
    sharded = compare_sharded(models, ds, batch_size=64, passes=2, seed=3, workers=2, threads=1,
                              on_batch=lambda done, total: seen.append((done, total)))
    n = single.settings["num_batches"]
    assert n >= 3 and seen == [(k, n) for k in range(1, n + 1)]
    assert np.allclose(sharded.value, single.value, rtol=0, atol=TOL, equal_nan=True)
    assert np.allclose(sharded.se, single.se, rtol=0, atol=TOL, equal_nan=True)
    assert np.isfinite(single.se).all() and single.se.max() > 0  # the jackknife is there, not NaN or zero
    backend = sharded.settings["backend"]
    assert backend["name"] == "ray" and backend["shards"] == 2 and backend["threads_per_shard"] == 1
    assert sum(backend["minibatches_per_shard"]) == n and len(backend["workers"]) == 2
    assert single.settings["backend"] == {"name": "local", "shards": 1}
    same = ("num_batches", "num_examples", "layers", "inputs", "arithmetic", "dataset")
    assert {k: sharded.settings[k] for k in same} == {k: single.settings[k] for k in same}
    assert sharded.warnings == single.warnings
    r01, s01 = sharded.pair(0, 1), single.pair(0, 1)
    assert r01.layers_a == s01.layers_a and r01.provenance["backend"]["shards"] == 2


def test_a_workers_typed_error_comes_back_as_itself(local_ray, trained_run):
    (m,) = _models(str(trained_run))
    gone = dataclasses.replace(m, provenance={**m.provenance, "resolved": "local-dir:/no/such/checkpoint", "path": None})
    with pytest.raises(ReferenceNotFoundError, match="/no/such/checkpoint"):
        compare_sharded([gone], comparison_dataset([m]), batch_size=128, workers=2, threads=1)


@pytest.mark.slow  # a second Ray comparison (~2 s); the sharded CKA test above stays fast
def test_blocks_with_the_ray_backend_give_the_same_blocks(local_ray, trained_run, tmp_path, one_thread):
    common = ["blocks", str(trained_run), "--batch-size", "100", "--pc-examples", "200", "--threads", "1", "--device", "cpu"]
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "local")])
    assert r.exit_code == 0, r.output
    # --recompute: the backend is not in the result's key, so the store would hand back the local result
    r = runner.invoke(app, [*common, "--backend", "ray", "--workers", "2", "--recompute", "--out", str(tmp_path / "ray")])
    assert r.exit_code == 0, r.output
    local, ray = (json.loads((tmp_path / w / "blocks.json").read_text()) for w in ("local", "ray"))
    assert ray["blocks"] == local["blocks"] and ray["pc1_fraction"] == local["pc1_fraction"]
    for key in ("cka", "cka_pc1_removed"):
        for field in ("cka", "se"):
            a, b = (np.array(d[key][field], dtype=float) for d in (ray, local))
            assert np.allclose(a, b, rtol=0, atol=TOL, equal_nan=True), (key, field)
    assert ray["cka"]["provenance"]["backend"]["shards"] == 2 and local["cka"]["provenance"]["backend"]["name"] == "local"
