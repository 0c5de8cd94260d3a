"""Devices on a machine without a GPU: choosing one from a string, what results record, the GPU code paths run on
the CPU (deferred loss read-back, resume states that move between devices). benchmarks/gpu_check.py runs the
same paths on a real GPU."""

import json

import pytest
import torch
from helpers import small_recipe
from safetensors import safe_open
from safetensors.torch import load_file

from hubcompare.errors import DeviceError, TrainingError
from hubcompare.models import devices
from hubcompare.models.devices import describe_device, exact_float32, fast_float64, resolve_device
from hubcompare.training import loop
from hubcompare.training.loop import RESUME_DIR, RESUME_FILE, build_model, resolve_precision, train


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without CUDA or MPS, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two CUDA devices (nothing is run on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


def _interrupted_after(recipe, out, epoch: int) -> None:
    """Train ``recipe`` into ``out`` on the CPU and interrupt it after ``epoch`` (its resume state stays)."""

    def stop(e):
        if e.kind == "epoch" and e.epoch == epoch:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(recipe, out, on_event=stop, device="cpu")


def test_resolve_device_accepts_the_documented_forms(no_gpu):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")  # no CUDA, no MPS: the CPU
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_prefers_cuda_and_cuda_n_must_exist(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"no CUDA device 2: this machine has 2 \(cpu, cuda:0, cuda:1\)") as e:
        resolve_device("cuda:2")
    assert e.value.params == ("device",)


@pytest.mark.parametrize("spec", ["nonsense", "gpu", "cuda:x", "cuda:", "cuda:-1", "cuda:0:1", "cpu:0", "", "cuda 0"])
def test_malformed_devices_are_a_typed_error(spec, no_gpu):
    with pytest.raises(DeviceError, match=r"is not one of auto, cpu, cuda, cuda:N or mps .*this machine has cpu") as e:
        resolve_device(spec)
    assert e.value.params == ("device",) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("spec, match", [("cuda", "CUDA is not available here"), ("cuda:0", "CUDA is not available here"),
                                         ("mps", "MPS .* is not available here")])
def test_absent_devices_are_a_typed_error_naming_what_is_here(spec, match, no_gpu):
    with pytest.raises(DeviceError, match=match + r".*choose auto or one of cpu\."):
        resolve_device(spec)


def test_describe_device_for_provenance():
    d = describe_device("cpu")
    assert d["type"] == "cpu" and d["threads"] == torch.get_num_threads() and "capability" in d and "name" in d
    json.dumps(d)  # goes into JSON results as it is


def test_fast_float64_by_capability(monkeypatch):
    assert fast_float64("cpu") and not fast_float64("mps")
    for capability, fast in (((9, 0), True), ((8, 0), True), ((8, 6), False), ((8, 9), False), ((12, 0), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev, c=capability: c)
        assert fast_float64("cuda:0") is fast, capability


def test_exact_float32_turns_tf32_off_and_restores_the_settings():
    flags = devices._tf32_flags()
    before = [getattr(obj, attr) for obj, attr, _ in flags]
    with exact_float32():
        assert [getattr(obj, attr) for obj, attr, _ in flags] == [value for _, _, value in flags]
        with exact_float32():  # nested: still off, and the outer block's values come back
            pass
        assert [getattr(obj, attr) for obj, attr, _ in flags] == [value for _, _, value in flags]
    assert [getattr(obj, attr) for obj, attr, _ in flags] == before


def test_precision_auto_per_device(monkeypatch):
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "mps") == "fp32"
    for native, expected in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(loop, "_cuda_bf16", lambda dev, n=native: n)
        assert resolve_precision("auto", "cuda:0") == expected
        assert resolve_precision("fp32", "cuda:0") == "fp32"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev: "Tesla T4")
    with pytest.raises(TrainingError, match="Tesla T4 .* has no native bf16.*auto"):
        resolve_precision("bf16", "cuda:0")


# ---- training: the GPU's deferred read-back, the record, resume states between devices -------
def _events(recipe, out, **kw):
    seen = []
    train(recipe, out, on_event=lambda e: seen.append((e.kind, e.epoch, e.step, e.loss, e.accuracy, e.lr)), **kw)
    return seen


def test_deferred_loss_read_back_changes_nothing(tmp_path, monkeypatch):
    """On GPUs the loss and accuracy are read back every ACCELERATOR_SYNC_STEPS steps: forced here on the CPU
    (7 steps, so epochs end mid-run), the same events with the same numbers, and bit-identical weights."""
    recipe = small_recipe(**{"train.epochs": 2})
    every_step = _events(recipe, tmp_path / "a", device="cpu")
    monkeypatch.setitem(loop.SYNC_STEPS, "cpu", 7)
    deferred = _events(recipe, tmp_path / "b", device="cpu")
    assert deferred == every_step and sum(e[0] == "step" for e in deferred) > 14
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "a" / "config.json").read_text())["hubcompare"]
    assert meta["device"]["type"] == "cpu" and "segments" not in meta["device"] and meta["precision"] == "fp32"
    with safe_open(str(tmp_path / "a" / "predictions.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["device"])["type"] == "cpu"


@pytest.mark.parametrize("sync_steps", [1, 7])
def test_a_diverged_loss_names_its_step(tmp_path, monkeypatch, sync_steps):
    monkeypatch.setitem(loop.SYNC_STEPS, "cpu", sync_steps)
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at epoch 1, step \d+: lower train.lr"):
        train(small_recipe(**{"train.lr": 1e12, "train.warmup_epochs": 0, "train.epochs": 1}), tmp_path / "run", device="cpu")


class Interrupt(Exception):
    pass


@pytest.mark.filterwarnings("ignore:.*to a meta parameter")  # loading into "meta" tensors copies no values: expected
def test_resume_state_holds_cpu_tensors_and_loads_onto_another_device(tmp_path):
    """The resume state is CPU tensors only; loading maps each onto the device of the parameter it belongs to
    (simulated with torch's "meta" device: where a second GPU's tensors would go, the momentum buffers go)."""
    recipe = small_recipe()
    _interrupted_after(recipe, tmp_path / "run", epoch=2)
    path = tmp_path / "run" / RESUME_DIR / RESUME_FILE
    with safe_open(str(path), framework="pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(f.metadata()["state"])
    assert state["epochs_done"] == 2 and state["devices"] == ["cpu"]
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in saved.values())
    momentum = [k for k in saved if k.startswith("momentum.")]
    assert momentum

    from hubcompare.data.datasets import load_dataset

    data = load_dataset("digits", "train")
    for target in ("cpu", "meta"):
        model = build_model(recipe, data).to(target, memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        generator = torch.Generator()
        loaded = loop._load_resume(path, model, optimizer, generator, recipe)
        assert loaded["epochs_done"] == 2 and torch.equal(generator.get_state(), saved["rng.generator"])
        params = dict(model.named_parameters())
        for k in momentum:
            buf = optimizer.state[params[k[len("momentum."):]]]["momentum_buffer"]
            assert buf.device.type == target
            if target == "cpu":
                assert torch.equal(buf, saved[k])
        if target == "cpu":
            assert all(torch.equal(v, saved[f"model.{k}"]) for k, v in model.state_dict().items())


def test_a_run_resumed_on_another_device_records_both(tmp_path, monkeypatch):
    """A resume state from another device resumes, and the checkpoint lists the devices of every segment."""
    recipe = small_recipe(**{"train.epochs": 3})
    _interrupted_after(recipe, tmp_path / "run", epoch=1)
    path = tmp_path / "run" / RESUME_DIR / RESUME_FILE
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    state = json.loads(meta["state"])
    state["devices"] = ["cuda:0"]  # as a run interrupted on a GPU writes it (its tensors are CPU tensors too)
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=meta | {"state": json.dumps(state)})
    result = train(recipe, tmp_path / "run", device="cpu")
    assert result.meta.resumed_at_epochs == [1]
    assert result.meta.device["type"] == "cpu" and result.meta.device["segments"] == ["cuda:0", "cpu"]
    train(recipe, tmp_path / "again", device="cpu")
    a, b = load_file(str(tmp_path / "run" / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_predictions_record_their_device_and_old_files_still_load(tmp_path):
    from hubcompare.models.predictions import Predictions

    p = Predictions(torch.zeros(3, 2), torch.tensor([0, 1, 0]), ["a", "b", "c"], {"fingerprint": "f"}, describe_device("cpu"))
    p.save(tmp_path / "p.safetensors")
    assert Predictions.load(tmp_path / "p.safetensors").device == describe_device("cpu")
    Predictions(p.logits, p.labels, p.ids, p.dataset).save(tmp_path / "old.safetensors")
    assert Predictions.load(tmp_path / "old.safetensors").device is None
