"""Helpers shared by the tests (fixtures live in conftest.py): ``from helpers import small_recipe``.

conftest.py imports this module before it points ``HF_ENDPOINT`` and the caches at the test server, so
nothing here may import hubcompare or huggingface_hub at module level (they read those once, on import).
"""

from __future__ import annotations

import socket

import torch


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_recipe(**overrides):
    """The digits recipe at ResNet-8 1x, 6 epochs (seconds on 2 cores); ``overrides`` as dotted keys."""
    from hubcompare.training.recipes import load_recipe

    base = {"model.depth": 8, "model.width": 1, "train.epochs": 6, "train.warmup_epochs": 1}
    base.update(overrides)
    return load_recipe("digits", base)


def one_epoch_recipe(seed: int, **overrides):
    """``small_recipe`` for one epoch, no warm-up: a distinct, barely trained member of a population."""
    return small_recipe(**{"train.epochs": 1, "train.warmup_epochs": 0, "train.seed": seed, **overrides})


def toy_dataset(n: int, classes: int = 10, size: int = 8, channels: int = 1, seed: int = 0):
    """``n`` random uint8 images (channels x size x size), labels cycling through ``classes``; the same every call."""
    from hubcompare.data.datasets import ImageDataset

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    return ImageDataset("toy", "test", images, torch.arange(n) % classes, [str(c) for c in range(classes)], [f"x{i}" for i in range(n)])


def computed_anyway(*args, **kwargs):
    """Patched in for a compute function where the result store must answer: calling it fails the test."""
    raise AssertionError("computed although the store holds the result")


def own_home_env(tmp_path) -> dict:
    """CLI environment with a HUBCOMPARE_HOME (so a result store and registry) of the test's own, no curated entries."""
    return {"HUBCOMPARE_HOME": str(tmp_path / "home"), "HUBCOMPARE_REGISTRY_DIRS": ""}


def ref_hsic1(K, L):
    """The recipe's three-term unbiased HSIC_1 of two Gram matrices, in numpy float64: the tests' independent reference."""
    import numpy as np

    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + one @ K @ one * (one @ L @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))
