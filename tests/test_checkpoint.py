"""The checkpoint folder: timm layout and round trip, model card, predictions, typed errors on bad files."""

import importlib.metadata
import json
import shutil

import pytest
import timm
import torch
from huggingface_hub import ModelCard

import hubcompare  # noqa: F401
from hubcompare.data.datasets import load_dataset
from hubcompare.errors import CheckpointCorruptError, CheckpointFileMissingError, CheckpointMismatchError
from hubcompare.models.checkpoint import load_checkpoint
from hubcompare.models.metadata import ModelMeta
from hubcompare.models.predictions import stored_predictions
from hubcompare.models.weights import load_model
from hubcompare.training.evaluate import evaluate_checkpoint


@pytest.fixture
def run_copy(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / "copy")


def test_folder_layout_and_timm_config(trained_run):
    files = {p.name for p in trained_run.iterdir()}
    assert files == {"model.safetensors", "config.json", "README.md", "predictions.safetensors"}
    assert not any(name.endswith(".tmp") for name in files)
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["architecture"] == "cifar_resnet" and cfg["num_classes"] == 10
    assert cfg["model_args"]["depth"] == 8 and cfg["model_args"]["width"] == 1
    assert cfg["pretrained_cfg"]["input_size"] == [1, 8, 8]
    meta = cfg["hubcompare"]
    for key in ("depth", "width", "dataset", "data_fraction", "seed", "recipe", "recipe_hash", "epochs",
                "test_accuracy", "package_versions", "train_data", "test_data"):
        assert key in meta, key
    assert meta["test_data"]["fingerprint"] == load_dataset("digits", "test").fingerprint
    # the installed distribution's version: PyPI's Linux wheels say 2.x.y where torch.__version__ says 2.x.y+cu124
    assert meta["package_versions"]["torch"] == importlib.metadata.version("torch")
    assert torch.__version__.startswith(meta["package_versions"]["torch"])


def test_timm_local_dir_round_trip(trained_run):
    via_timm = timm.create_model(f"local-dir:{trained_run}", pretrained=True).eval()
    ours = load_model(load_checkpoint(trained_run))
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(via_timm(x), ours(x))
    assert via_timm.pretrained_cfg["label_names"] == [str(i) for i in range(10)]


def test_metadata_record_round_trips_config_json(trained_run):
    """The typed record reads every key training wrote and writes back the same block (unknown keys too)."""
    cfg = json.loads((trained_run / "config.json").read_text())
    block = cfg["hubcompare"] | {"a_key_from_a_newer_version": [1, 2]}
    meta = ModelMeta.from_dict(block)
    assert meta.extra == {"a_key_from_a_newer_version": [1, 2]}
    assert meta.to_dict() == block
    assert meta.summary() == {"architecture": "cifar_resnet", "depth": 8, "width": 1, "dataset": "digits",
                              "data_fraction": 1.0, "seed": 0, "test_accuracy": block["test_accuracy"]}
    assert meta.test_fingerprint == load_dataset("digits", "test").fingerprint and meta.is_hubcompare_run


def test_metadata_of_a_plain_timm_config_comes_from_timm_keys():
    config = {"architecture": "resnet18", "num_classes": 1000, "model_args": {"depth": 18}}
    meta = ModelMeta.from_config(config)
    assert meta.summary() == {"architecture": "resnet18", "depth": 18} and meta.num_classes == 1000
    assert not meta.is_hubcompare_run and meta.to_dict() == {"architecture": "resnet18", "depth": 18, "num_classes": 1000}


def test_card_metadata_parses_back(trained_run):
    card = ModelCard.load(trained_run / "README.md")
    meta = load_checkpoint(trained_run).meta
    assert card.data.library_name == "timm"
    assert {"hubcompare", "cifar_resnet", "depth-8", "width-1", "dataset-digits", "fraction-1", "seed-0"} <= set(card.data.tags)
    assert card.data.datasets == ["digits"]
    (result,) = card.data.eval_results
    assert result.metric_type == "accuracy" and result.metric_value == pytest.approx(meta.test_accuracy)
    assert card.data.hubcompare["recipe_hash"] == meta.recipe_hash
    assert "last epoch" in card.text


def test_stored_predictions_match_a_fresh_evaluation(trained_run):
    ckpt = load_checkpoint(trained_run)
    stored = stored_predictions(ckpt)
    test = load_dataset("digits", "test")
    assert stored.ids == test.ids and torch.equal(stored.labels, test.labels)
    assert stored.accuracy == pytest.approx(ckpt.meta.test_accuracy)
    report = evaluate_checkpoint(ckpt)
    assert report.stored_predictions_agree == 1.0
    assert report.max_abs_logit_diff < 1e-5
    assert report.predictions.accuracy == pytest.approx(stored.accuracy)


def test_corrupt_weights_name_the_file(run_copy):
    (run_copy / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    cfg = json.loads((run_copy / "config.json").read_text())
    del cfg["hubcompare"]["weights_sha256"]  # get past the hash check to the parser
    (run_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointCorruptError, match="model.safetensors") as e:
        load_model(load_checkpoint(run_copy))
    assert e.value.path.name == "model.safetensors"


def test_replaced_weights_are_a_mismatch(run_copy, tmp_path):
    from helpers import small_recipe

    from hubcompare.training.loop import train

    other = train(small_recipe(**{"train.seed": 5, "train.epochs": 2}), tmp_path / "other").run_dir
    shutil.copy(other / "model.safetensors", run_copy / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="model.safetensors"):
        load_model(load_checkpoint(run_copy))


def test_config_that_does_not_fit_the_weights(run_copy):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["model_args"]["depth"] = 14
    del cfg["hubcompare"]["weights_sha256"]
    (run_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_model(load_checkpoint(run_copy))


def test_missing_and_unparsable_files(run_copy, tmp_path):
    with pytest.raises(CheckpointFileMissingError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    (run_copy / "predictions.safetensors").write_bytes(b"12345678")
    with pytest.raises(CheckpointCorruptError, match="predictions.safetensors"):
        stored_predictions(load_checkpoint(run_copy))
    (run_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointFileMissingError, match="model.safetensors"):
        load_checkpoint(run_copy)
    (run_copy / "config.json").write_text("{not json")
    with pytest.raises(CheckpointCorruptError, match="config.json"):
        load_checkpoint(run_copy)
    (run_copy / "config.json").unlink()
    with pytest.raises(CheckpointFileMissingError, match="config.json"):
        load_checkpoint(run_copy)
