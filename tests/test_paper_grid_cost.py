"""benchmarks/paper_grid_cost.py prices the paper's grid from counted FLOPs: the count must equal the CIFAR
ResNet's multiply-adds worked out by hand (an independent reference), and the scheduler must be a real makespan."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paper_grid_cost import CIFAR_TEST, CIFAR_TRAIN, count_flops, makespan, run_flops  # noqa: E402


def resnet_macs(depth: int, width: int) -> int:
    """Multiply-adds of one 32x32 image through the paper's ResNet v1 (convs, 1x1 projections, the dense head)."""
    n = (depth - 2) // 6
    c1, c2, c3 = round(16 * width), round(32 * width), round(64 * width)
    macs = 32 * 32 * 3 * c1 * 9  # stem
    macs += 2 * n * 32 * 32 * c1 * c1 * 9  # stage 1
    for side, c_in, c_out in ((16, c1, c2), (8, c2, c3)):  # stages 2 and 3: stride-2 first conv + projection
        macs += side * side * (c_in * c_out * 9 + (2 * n - 1) * c_out * c_out * 9 + c_in * c_out)
    return macs + c3 * 10


@pytest.mark.parametrize(("depth", "width"), [(14, 1), (20, 1), (20, 2), (56, 4), (110, 1)])
def test_counted_flops_are_twice_the_hand_counted_multiply_adds(depth, width):
    f = count_flops(depth, width)
    assert f.forward == 2 * resnet_macs(depth, width)
    assert 2.9 < f.train / f.forward < 3.1  # backward: gradients of inputs and of weights


def test_published_sizes():
    """ResNet-20 and -110 (1x) are the ~41 M and ~253 M multiply-add networks of He et al.'s CIFAR table."""
    assert count_flops(20, 1).forward / 2 == pytest.approx(40.8e6, rel=0.01)
    assert count_flops(110, 1).forward / 2 == pytest.approx(253e6, rel=0.01)


def test_a_run_costs_its_epochs_and_its_evaluation():
    f = count_flops(14, 1)
    quarter = CIFAR_TRAIN // 4
    assert run_flops(f, 0.25, 10) == f.train * quarter * 10 + f.forward * (quarter + CIFAR_TEST)


def test_makespan_is_longest_first_list_scheduling():
    assert makespan([3.0] * 8, 4) == 6  # even work splits evenly
    assert makespan([100.0, 1.0, 1.0], 64) == 100  # the longest run sets the floor, however many GPUs
    assert makespan([5, 4, 3, 3, 3], 2) == 10  # longest first: {5, 3}, {4, 3, 3} (the optimum 9 needs a search)
    assert makespan([2.0, 7.0, 1.0], 1) == 10  # one GPU: the sum
