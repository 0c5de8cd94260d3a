"""Shared fixtures: small digits checkpoints trained once per session (seconds on 2 cores), the local Hub,
and a fixed seed for every test. Shared helper functions are in helpers.py.

The Hub client reads ``HF_ENDPOINT`` (and the cache paths) once, when ``huggingface_hub`` is first
imported, and hubcompare's own modules import it: so the local Hub-protocol server's address and a
throw-away cache are set here, before any other import. The ``hub`` fixture starts the server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from helpers import free_port, small_recipe

_HUB_PORT = free_port()
_HUB_TMP = tempfile.mkdtemp(prefix="hubcompare-tests-")
atexit.register(shutil.rmtree, _HUB_TMP, ignore_errors=True)
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_HUB_PORT}"
os.environ["HF_HOME"] = os.path.join(_HUB_TMP, "hf-home")
os.environ["HF_HUB_CACHE"] = os.path.join(_HUB_TMP, "hf-home", "hub")
os.environ["HF_TOKEN"] = "hf_hubcompare_tests_dummy_token"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "0"
os.environ["HUBCOMPARE_HOME"] = os.path.join(_HUB_TMP, "hubcompare-home")

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
pytest.register_assert_rewrite("service_harness")  # test modules import its helpers as well as using it as a plugin

CIFAR10_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
SEED = 0


@pytest.fixture(autouse=True)
def _seed_every_test():
    """Each test starts from the same global RNG state (torch, numpy, random), whatever ran before it."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


@pytest.fixture
def rng() -> np.random.Generator:
    """A numpy Generator seeded the same for every test that asks for one."""
    return np.random.default_rng(SEED)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished digits checkpoint folder (ResNet-8, 6 epochs)."""
    from hubcompare.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "digits-r8"
    train(small_recipe(), out)
    return out


@pytest.fixture(scope="session")
def block_models(tmp_path_factory) -> dict:
    """The slow lane's digits models with and without block structure, trained once per session by
    ``benchmarks/blocks_plain_loop.py`` (one process per model, all at once, one thread each; ~6 min on 2 cores):

    - ``"deep"``: ResNet-56 2x, seeds 0, 1, 2 (a block in most seeds), a list in seed order;
    - ``"shallow"``: ResNet-20 1x, seed 0 (no block), the same recipe.

    Returns ``{"deep": [record, record, record], "shallow": record}``. A record is the script's JSON line for the
    model: ``depth``, ``width``, ``seed``, ``lr``, ``shift``, ``seconds``, ``test_accuracy``, ``checkpoint`` (the
    checkpoint folder: a str path every hubcompare command and ``resolve_reference`` load), ``blocks`` (each
    ``{"layers": "LO-HI"`` (indices over the stem and the block outputs), ``"mean_cka"``, ``"outside"``,
    ``"mean_pc1"``, ``"names"``: the layer names from LO to HI``}``) and ``pc1`` (each layer's PC1 share); a model
    whose activations diverged has ``"error"`` instead of ``blocks``/``pc1``. Keep these names and types stable.
    """
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "blocks_plain_loop.py"
    folder = tmp_path_factory.mktemp("block-models")
    runs = [("--seeds", str(s)) for s in range(3)] + [("--depth", "20", "--width", "1", "--seeds", "0")]
    procs = [subprocess.Popen([sys.executable, str(script), *args, "--checkpoints", str(folder)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in runs]
    records = []
    for p in procs:
        out, err = p.communicate(timeout=3000)
        assert p.returncode == 0, err[-2000:]
        records.append(json.loads(out.splitlines()[0]))
    return {"deep": records[:3], "shallow": records[3]}


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray (``ray.init(num_cpus=2)``) for the whole session, started by the first test that asks for it
    (the grid's Ray backend, sharded CKA): each module asking for it does not pay Ray's start-up again."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'hubcompare[ray]')")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cifar10_jpeg() -> Path:
    if not (CIFAR10_JPEG / "test.npz").is_file():
        pytest.skip("../shared/data/cifar10-jpeg is not on this machine")
    return CIFAR10_JPEG


@pytest.fixture(scope="session")
def hub():
    """The project's Hub-protocol server on HF_ENDPOINT's port, data in a temp folder, for the whole session."""
    from hubcompare.hub.server import HubServer

    with HubServer(os.path.join(_HUB_TMP, "hub-data"), port=_HUB_PORT) as server:
        assert server.endpoint == os.environ["HF_ENDPOINT"]
        yield server
