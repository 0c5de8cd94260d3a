"""Training: real accuracy on digits, seeded reproducibility, resume after interruption, the recipe's schedule."""

import math

import pytest
import torch
from helpers import small_recipe
from safetensors.torch import load_file

from hubcompare.data.datasets import load_dataset
from hubcompare.errors import DatasetError, InvalidArchitectureError, RecipeError, TrainingError
from hubcompare.models.weights import load_model
from hubcompare.training.loop import RESUME_DIR, _param_groups, build_model, lr_at_epoch, train
from hubcompare.training.recipes import load_recipe


def weights(run):
    return load_file(str(run / "model.safetensors"))


def test_digits_training_reaches_real_accuracy(trained_run):
    from hubcompare.models.checkpoint import load_checkpoint

    meta = load_checkpoint(trained_run).meta
    assert meta.test_accuracy > 0.8  # chance is 0.1
    assert meta.history[-1]["epoch"] == 6 and len(meta.history) == 6
    assert meta.history[-1]["loss"] < meta.history[0]["loss"]


def test_same_seed_same_weights_different_seed_different(tmp_path, trained_run):
    train(small_recipe(), tmp_path / "again")
    a, b = weights(trained_run), weights(tmp_path / "again")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    train(small_recipe(**{"train.seed": 1}), tmp_path / "seed1")
    c = weights(tmp_path / "seed1")
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_identical_weights(tmp_path, trained_run):
    out = tmp_path / "interrupted"

    def stop_after_epoch_3(e):
        if e.kind == "epoch" and e.epoch == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(small_recipe(), out, on_event=stop_after_epoch_3)
    assert (out / RESUME_DIR).is_dir() and not (out / "config.json").exists()
    starts = []
    result = train(small_recipe(), out, on_event=lambda e: starts.append(e.resumed_from) if e.kind == "start" else None)
    assert starts == [3]
    assert result.meta.resumed_at_epochs == [3]
    assert not (out / RESUME_DIR).exists()
    a, b = weights(trained_run), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same as the uninterrupted run


def test_resume_refuses_a_different_recipe(tmp_path):
    out = tmp_path / "run"

    def stop(e):
        if e.kind == "epoch":
            raise Interrupt

    with pytest.raises(Interrupt):
        train(small_recipe(), out, on_event=stop)
    with pytest.raises(TrainingError, match="different recipe"):
        train(small_recipe(**{"train.lr": 0.01}), out)


def test_finished_output_is_not_overwritten_silently(trained_run):
    with pytest.raises(TrainingError, match=r"retrain it \(overwrite\)"):
        train(small_recipe(), trained_run)


def test_unusable_output_fails_before_any_work(tmp_path, monkeypatch):
    import hubcompare.training.loop as loop

    def no_data(*args, **kwargs):
        raise AssertionError("the output must be checked before the data is loaded")

    monkeypatch.setattr(loop, "load_dataset", no_data)
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(TrainingError, match="is a file, not a folder") as e:
        train(small_recipe(), file)
    assert e.value.params == ("out",)
    with pytest.raises(TrainingError, match="cannot write the checkpoint folder") as e:
        train(small_recipe(), file / "sub")
    assert e.value.params == ("out",)
    with pytest.raises(TrainingError, match="is a file, not a folder"):  # overwrite=True never touches a file
        train(small_recipe(), file, overwrite=True)
    assert file.read_text() == "x"


def test_a_model_too_large_for_memory_is_a_training_error(tmp_path):
    with pytest.raises(TrainingError, match="does not fit in memory.*smaller width") as e:
        train(small_recipe(**{"model.width": 1e9}), tmp_path / "huge")
    assert set(e.value.params) == {"width", "depth"}


def test_recipe_files_that_are_not_text(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe(p)


def test_schedule_warmup_then_cosine():
    r = load_recipe("digits", {"train.epochs": 10, "train.warmup_epochs": 2, "train.lr": 0.1})
    lrs = [lr_at_epoch(e, r) for e in range(10)]
    assert lrs[:2] == pytest.approx([0.05, 0.1])
    assert lrs[2] == pytest.approx(0.1)
    assert lrs[6] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(x > y for x, y in zip(lrs[2:], lrs[3:]))  # decays monotonically after warm-up


def test_weight_decay_only_on_kernels():
    r = load_recipe("digits")
    model = build_model(r, load_dataset("digits", "test"))
    decay, no_decay = _param_groups(model, 2e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and p.ndim == 4 or names[id(p)] == "fc.weight" for p in decay["params"])
    assert {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]} == {"weight", "bias"}  # BN weights, biases
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_paper_recipe_values():
    t = load_recipe("cifar10")["train"]
    assert (t["lr"], t["momentum"], t["batch_size"], t["epochs"], t["schedule"]) == (0.01, 0.9, 128, 300, "cosine")
    aug = load_recipe("cifar10")["augment"]
    assert aug == {"pad": 4, "pad_mode": "reflect", "flip": True, "offsets": "example"}


@pytest.mark.parametrize(
    "overrides,error,match",
    [({"model.depth": 15}, InvalidArchitectureError, "6n\\+2"), ({"train.schedule": "step"}, RecipeError, "schedule"),
     ({"data.dataset": "mnist"}, RecipeError, "unknown dataset"), ({"data.fraction": "2"}, DatasetError, "fraction"),
     ({"train.batch_size": 1}, RecipeError, "batch_size"), ({"model.init": "xavier"}, RecipeError, "model.init"),
     ({"model.bn_momentum": 0.99 + 1}, RecipeError, "bn_momentum"), ({"train.weight_decay_on": "bias"}, RecipeError, "weight_decay_on"),
     ({"augment.offsets": "image"}, RecipeError, "augment.offsets"), ({"model.width": float("inf")}, RecipeError, "finite"),
     ({"train.lr": float("nan")}, RecipeError, "train.lr.*finite"), ({"train.seed": 2**64}, RecipeError, "train.seed"),
     ({"train.seed": -1}, RecipeError, "train.seed"), ({"train.epochs": 2, "train.warmup_epochs": 2}, RecipeError, "more epochs")],
)
def test_bad_recipe_values(overrides, error, match):
    with pytest.raises(error, match=match):
        load_recipe("digits", overrides)


def test_unknown_recipe_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: {depth: 20, width: 1, dropout: 0.1}\ndata: {dataset: digits}\ntrain: {epochs: 1, batch_size: 8, lr: 0.1}\n")
    with pytest.raises(RecipeError, match="dropout"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("no-such-recipe")


def test_pytorch_style_options_train_and_round_trip(tmp_path):
    """init/BN/weight-decay options reach the model and optimiser, and a checkpoint reloads with its BN eps."""
    from hubcompare.models.checkpoint import load_checkpoint
    from hubcompare.models.resnet import CifarResNet

    assert CifarResNet(8, 1, init="torch").stem.conv.bias.abs().sum() > 0  # PyTorch's default init: biases not zeroed
    assert CifarResNet(8, 1).stem.conv.bias.abs().sum() == 0
    opts = {"model.init": "torch", "model.bn_momentum": 0.1, "model.bn_eps": 1e-5, "train.weight_decay_on": "all",
            "augment.offsets": "batch"}
    result = train(small_recipe(**opts, **{"train.epochs": 2}), tmp_path / "run")
    ckpt = load_checkpoint(result.run_dir)
    bns = [m for m in load_model(ckpt).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in bns} == {(1e-5, 0.1)}
    assert ckpt.config["model_args"]["bn_eps"] == 1e-5
    from hubcompare.training.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(ckpt)  # recomputed logits match the stored predictions: the eps came back
    assert report.stored_predictions_agree == 1.0 and report.max_abs_logit_diff < 1e-4


def test_bundled_digits_blocks_recipe_builds_its_model():
    recipe = load_recipe("digits-blocks")
    model = build_model(recipe, load_dataset("digits", "test"))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert model.depth == 56 and {(m.eps, m.momentum) for m in bns} == {(1e-5, 0.1)}
    assert recipe["train"]["weight_decay_on"] == "all" and recipe["train"]["epochs"] == 60


def test_later_recipe_keys_leave_existing_hashes_alone():
    """Recipes that don't use the later options hash as they did before the options existed (resumes stay valid)."""
    base = load_recipe("cifar10", {"model.depth": 56, "data.fraction": "1/16", "train.epochs": 200, "data.dataset": "cifar10-jpeg"})
    assert base.hash == "aaa796859ba47223"  # recorded by a run started before model.init & co. existed
    assert load_recipe("cifar10", {"model.depth": 56, "data.fraction": "1/16", "train.epochs": 200, "data.dataset": "cifar10-jpeg",
                                   "model.init": "torch"}).hash != base.hash


def test_schedule_per_step_follows_the_same_curve():
    r = load_recipe("digits", {"train.epochs": 10, "train.warmup_epochs": 2, "train.lr": 0.1, "train.lr_update": "step"})
    assert lr_at_epoch(0, r, 0, 4) == pytest.approx(0.1 * 0.25 / 2)  # ramps from ~0, not lr / warmup_epochs
    assert lr_at_epoch(1, r, 3, 4) == pytest.approx(0.1)  # warm-up ends where the per-epoch schedule's does
    assert lr_at_epoch(6, r, 2, 4) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4.5 / 8)))
    lrs = [lr_at_epoch(e, r, s, 4) for e in range(2, 10) for s in range(4)]
    assert all(x > y for x, y in zip(lrs, lrs[1:]))
    epoch_recipe = r.with_overrides({"train.lr_update": "epoch"})
    assert lr_at_epoch(6, epoch_recipe, 2, 4) == lr_at_epoch(6, epoch_recipe)  # per epoch: the step is ignored
    with pytest.raises(RecipeError, match="lr_update"):
        r.with_overrides({"train.lr_update": "batch"})
