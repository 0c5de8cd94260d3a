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
