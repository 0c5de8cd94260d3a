"""Shared fixtures: small digits checkpoints trained once per session (seconds on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

CIFAR10_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def small_recipe(**overrides):
    from hubcompare.recipes import load_recipe

    base = {"model.depth": 8, "model.width": 1, "train.epochs": 6, "train.warmup_epochs": 1}
    base.update(overrides)
    return load_recipe("digits", base)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished digits checkpoint folder (ResNet-8, 6 epochs)."""
    from hubcompare.train import train

    out = tmp_path_factory.mktemp("runs") / "digits-r8"
    train(small_recipe(), out)
    return out


@pytest.fixture(scope="session")
def cifar10_jpeg() -> Path:
    if not (CIFAR10_JPEG / "test.npz").is_file():
        pytest.skip("../shared/data/cifar10-jpeg is not on this machine")
    return CIFAR10_JPEG
