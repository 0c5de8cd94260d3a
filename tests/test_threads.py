"""Default torch threads (hubcompare.models.threads): the rule under faked /proc/stat, affinity and model sizes;
what train records and prints."""

import json

import pytest
import torch
from helpers import small_recipe
from torch import nn
from typer.testing import CliRunner

from hubcompare.cli import app
from hubcompare.errors import TrainingError
from hubcompare.models.threads import (
    SMALL_STEP_MACS,
    ThreadChoice,
    ThreadPolicy,
    choose_threads,
    forward_macs,
    idle_cores,
)
from hubcompare.training.loop import RESUME_DIR, build_model, train
from hubcompare.training.recipes import load_recipe

BIG = 10 * SMALL_STEP_MACS


def stat(*cpus):
    """A /proc/stat text: one line per CPU from (user, nice, system, idle) jiffies."""
    total = [sum(c[i] for c in cpus) for i in range(4)]
    lines = ["cpu  " + " ".join(map(str, total + [0] * 6))]
    lines += [f"cpu{k} " + " ".join(map(str, list(c) + [0] * 6)) for k, c in enumerate(cpus)]
    return "\n".join(lines + ["intr 1 2 3", "ctxt 99"]) + "\n"


def sampled(tmp_path, before, after, **kw):
    path = tmp_path / "stat"
    path.write_text(stat(*before))
    return idle_cores(0.15, stat_path=str(path), sleep=lambda s: path.write_text(stat(*after)), **kw)


def test_idle_cores_from_proc_stat(tmp_path):
    start = [(100, 0, 10, 1000), (100, 0, 10, 1000)]
    # cpu0 busy the whole sample, cpu1 idle: one idle core
    assert sampled(tmp_path, start, [(115, 0, 10, 1000), (100, 0, 10, 1015)], cpus={0, 1}) == 1.0
    assert sampled(tmp_path, start, [(100, 0, 10, 1015), (100, 0, 10, 1015)], cpus={0, 1}) == 2.0
    # a core idle only half the sample is busy (a peer there still stalls every parallel region)
    assert sampled(tmp_path, start, [(108, 0, 0 + 10, 1007), (100, 0, 10, 1015)], cpus={0, 1}) == 1.0
    # only the cores this process may use count
    assert sampled(tmp_path, start, [(115, 0, 10, 1000), (100, 0, 10, 1015)], cpus={0}) == 0.0


def test_niced_load_counts_as_idle_only_for_a_process_that_is_not_niced(tmp_path):
    start = [(100, 0, 10, 1000), (100, 0, 10, 1000)]
    niced = [(100, 15, 10, 1000), (100, 15, 10, 1000)]  # both cores run a nice-19 job
    assert sampled(tmp_path, start, niced, cpus={0, 1}, count_nice_as_idle=True) == 2.0
    assert sampled(tmp_path, start, niced, cpus={0, 1}, count_nice_as_idle=False) == 0.0


def test_idle_cores_without_proc_stat_uses_the_load_average(tmp_path):
    missing = str(tmp_path / "no-such-stat")
    def idle(load, cpus=(0, 1)):
        return idle_cores(0, stat_path=missing, cpus=set(cpus), sleep=lambda s: None, loadavg=lambda: (load, 0, 0))

    assert (idle(1.9), idle(1.1), idle(0.2), idle(0.0, range(4)), idle(7.0)) == (0.0, 1.0, 2.0, 4.0, 0.0)


def never(): raise AssertionError("the load was sampled")


@pytest.mark.parametrize("macs, cores, idle, policy, expected, reason", [
    (BIG, 2, lambda: 2.0, None, 2, "2 usable cores"),
    (BIG, 2, lambda: 1.0, None, 1, "the other core is busy"),
    (BIG, 2, lambda: 0.0, None, 1, "the other core is busy"),
    (BIG, 8, lambda: 5.0, None, 5, "3 of 8 cores busy"),
    (BIG, 8, lambda: None, None, 8, "8 usable cores"),  # nothing readable: every usable core
    (None, 2, lambda: 1.0, None, 1, "the other core is busy"),  # a comparison pass: by the load alone
    (SMALL_STEP_MACS / 5, 16, never, None, 1, "small model"),
    (BIG, 1, never, None, 1, "1 usable core"),
    (BIG, 8, never, ThreadPolicy(at_most=2, by_load=False), 2, "this run's share of 8 cores"),
    (BIG, 8, lambda: 1.0, ThreadPolicy(at_most=4), 1, "7 of 8 cores busy"),
    (BIG, 2, never, ThreadPolicy(by_load=False), 2, "2 usable cores"),
    (SMALL_STEP_MACS / 5, 2, never, ThreadPolicy(at_most=2, by_load=False), 1, "small model"),
])
def test_choose_threads(macs, cores, idle, policy, expected, reason):
    choice = choose_threads(macs, policy, cores=cores, idle=idle)
    assert choice.threads == expected and choice.reason.startswith(reason)


def test_forward_macs_counts_convolutions_and_linear_layers():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    assert forward_macs(model, (1, 8, 8)) == 8 * 8 * 4 * 9 + 256 * 10
    assert model.training  # put back as it was


def test_digits_models_are_small_and_a_cifar_resnet20_is_not():
    from types import SimpleNamespace

    def macs(recipe, shape, depth):
        r = load_recipe(recipe, {"model.depth": depth})
        data = SimpleNamespace(image_shape=shape, num_classes=10, classes=list("0123456789"), name="x")
        return forward_macs(build_model(r, data), shape) * r["train"]["batch_size"]

    assert macs("digits", (1, 8, 8), 14) < SMALL_STEP_MACS  # the digits recipe: 1 thread
    assert macs("cifar10", (3, 32, 32), 20) > 4 * SMALL_STEP_MACS  # the paper's recipe: the idle cores


def test_train_records_the_threads_it_chose_restores_torchs_and_a_resume_keeps_them(tmp_path):
    torch.set_num_threads(2)
    events = []
    recipe = small_recipe(**{"train.epochs": 2, "data.fraction": "1/8"})  # 2 steps an epoch
    result = train(recipe, tmp_path / "small", on_event=events.append)
    start = next(e for e in events if e.kind == "start")
    assert start.threads == ThreadChoice(1, start.threads.reason) and start.threads.reason.startswith("small model")
    assert result.meta.torch_threads == 1 and torch.get_num_threads() == 2

    class Stop(Exception):
        pass

    def stop(e):
        if e.kind == "epoch":
            raise Stop

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        train(recipe, out, on_event=stop, threads=2)  # asked for 2: the resume state records it
    assert (out / RESUME_DIR).is_dir()
    events.clear()
    result = train(recipe, out, on_event=events.append)  # no count asked: the run's own, not the rule's 1
    assert next(e for e in events if e.kind == "start").threads.threads == 2
    assert result.meta.torch_threads == 2 and result.meta.resumed_at_epochs == [1]
    with pytest.raises(TrainingError, match="at least 1"):  # before any work
        train(recipe, tmp_path / "zero", threads=0)
    assert not (tmp_path / "zero").exists()


def test_cli_train_prints_the_thread_count_once_on_stderr(tmp_path):
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["train", "digits", "--depth", "8", "--epochs", "3", "--data-fraction", "1/8", "--out", str(out),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert r.stderr.count("threads: 1 (small model") == 1 and "threads:" not in r.stdout
    assert json.loads((out / "config.json").read_text())["hubcompare"]["torch_threads"] == 1
