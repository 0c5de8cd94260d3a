"""Training: a recipe in, a checkpoint folder out. Seeded, resumable, no printing.

The whole training split lives in memory as a uint8 tensor (on the training device); each step
gathers a batch, scales it to [0, 1] and applies pad-crop-flip as batched tensor ops
(:mod:`hubcompare.data.augment`). All randomness after initialisation comes from one CPU
``torch.Generator`` whose state is saved with every epoch, so an interrupted run resumed from its last
epoch ends with the same weights as an uninterrupted one (bit for bit on the same CPU), and draws the
same batches and augmentations on any device. Progress is reported through an ``on_event`` callback
(the CLI draws it).

Devices (``device``; :mod:`hubcompare.models.devices`): the model is initialised on the CPU (the same
weights everywhere) and moved; on a GPU it trains channels-last under autocast (``train.precision:
auto``: bf16 where the GPU has it, else fp16 with loss scaling), and the per-step loss and accuracy
are read back every ``ACCELERATOR_SYNC_STEPS`` steps instead of every step, so the host never waits for
the GPU in between. Checkpoints and resume states always hold CPU tensors; a resume state written on
one device resumes on another.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..data.augment import pad_crop_flip, to_float
from ..data.datasets import ImageDataset, load_dataset, parse_fraction, shuffle_labels, stratified_subset
from ..errors import TrainingError
from ..models.checkpoint import CONFIG_FILE, RESUME_DIR
from ..models.devices import describe_device, resolve_device
from ..models.metadata import ModelMeta
from ..models.predictions import predict
from ..models.resnet import ARCHITECTURE
from ..models.threads import ThreadChoice, ThreadPolicy, choose_threads, forward_macs
from ..models.weights import write_checkpoint
from ..provenance import atomic_write_bytes, package_versions
from .recipes import Recipe

__all__ = ["TrainEvent", "TrainResult", "train", "lr_at_epoch", "build_model", "RESUME_DIR"]

RESUME_FILE = "state.safetensors"
# steps between reading the loss and accuracy back, by device type: every step on the CPU (a diverged loss
# stops the run before its update), every ACCELERATOR_SYNC_STEPS on GPUs (the host runs ahead of the GPU)
SYNC_STEPS = {"cpu": 1}
ACCELERATOR_SYNC_STEPS = 25
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainEvent:
    """What the trainer reports: ``kind`` is start | step | epoch | evaluate | evaluate_batch | done.

    ``step``/``steps`` count training steps of the epoch for ``step`` and ``epoch`` events, and test examples
    (evaluated / in the test split) for ``evaluate`` (the start of the final evaluation) and ``evaluate_batch``.
    """

    kind: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    accuracy: float | None = None
    lr: float | None = None
    resumed_from: int = 0
    num_train: int = 0
    threads: ThreadChoice | None = None  # start: the torch threads this run trains with, and why


@dataclass
class TrainResult:
    run_dir: Path
    test_accuracy: float
    train_accuracy: float
    wall_time_s: float
    meta: ModelMeta = field(repr=False)


def lr_at_epoch(epoch: int, recipe: Recipe, step: int = 0, steps: int = 1) -> float:
    """Learning rate for 0-based ``epoch``: linear warm-up, then cosine decay towards 0.

    With ``train.lr_update: epoch`` (the authors') the whole epoch uses one value; with ``step``,
    ``step`` of ``steps`` moves along the same curve, so warm-up ramps from ~0 instead of jumping to
    lr / warmup_epochs at the first step (gentler for deep models at high learning rates).
    """
    t = recipe["train"]
    base, warm, total = float(t["lr"]), t["warmup_epochs"], t["epochs"]
    per_step = t["lr_update"] == "step"
    if epoch < warm:
        return base * (epoch + ((step + 1) / steps if per_step else 1.0)) / warm
    if t["schedule"] == "constant":
        return base
    position = epoch - warm + (step / steps if per_step else 0.0)
    return base * 0.5 * (1.0 + math.cos(math.pi * position / (total - warm)))


def build_model(recipe: Recipe, data: ImageDataset) -> torch.nn.Module:
    """The recipe's ResNet via ``timm.create_model``, with a pretrained_cfg describing ``data``."""
    c, h, w = data.image_shape
    return timm.create_model(
        ARCHITECTURE,
        depth=recipe["model"]["depth"],
        width=recipe["model"]["width"],
        bn_momentum=recipe["model"]["bn_momentum"],
        bn_eps=recipe["model"]["bn_eps"],
        init=recipe["model"]["init"],
        num_classes=data.num_classes,
        in_chans=c,
        pretrained_cfg_overlay=dict(
            input_size=(c, h, w), num_classes=data.num_classes, label_names=list(data.classes),
            mean=(0.0,) * c, std=(1.0,) * c, tag=data.name,
        ),
    )


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """The autocast a recipe's ``train.precision`` means on ``device``: 'fp32' (none), 'bf16' or 'fp16'.

    'auto' -> on the CPU, 'bf16' where it runs bf16 convolutions natively (AVX512-BF16/AMX), else 'fp32';
    on a CUDA GPU, 'bf16' where it has native bf16 (compute capability 8.0+), else 'fp16' (with loss
    scaling); on MPS, 'fp32'. An explicit 'bf16' on a GPU without native bf16 is a TrainingError.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        native = _cuda_bf16(dev)
        if precision == "bf16" and not native:
            name = torch.cuda.get_device_name(dev)
            raise TrainingError(f"{name} ({dev}) has no native bf16 (compute capability 8.0+): set train.precision to auto "
                                "(fp16 with loss scaling here) or fp32.")
        return ("bf16" if native else "fp16") if precision == "auto" else precision
    if precision != "auto":
        return precision
    if dev.type != "cpu":
        return "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() and torch.cpu._is_avx512_bf16_supported() else "fp32"


def _cuda_bf16(dev: torch.device) -> bool:
    with torch.cuda.device(dev):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3: no emulation to tell apart
            return torch.cuda.is_bf16_supported()


def _param_groups(model: torch.nn.Module, weight_decay: float, on: str = "kernels") -> list[dict]:
    # "kernels": weight decay on conv and dense kernels only, never on biases or BN parameters
    if on == "all":
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _check_out(out: Path) -> None:
    """Refuse, before any epoch runs, an output that cannot become a checkpoint folder (a file, an unwritable place)."""
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out} is a file, not a folder: choose a folder for the checkpoint (it is created if missing).",
                            params=("out",))
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise TrainingError(f"cannot write the checkpoint folder {out} ({e.strerror or e}): choose a folder you can write to.",
                            params=("out",)) from None


@contextmanager
def _fits_in_memory(recipe: Recipe):
    """A model or batch too large for memory (torch's allocator fails) becomes a TrainingError naming the sizes."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "allocate" not in str(e) and "out of memory" not in str(e):
            raise
        m, t = recipe["model"], recipe["train"]
        raise TrainingError(
            f"ResNet-{m['depth']} at width {m['width']:g} with batch size {t['batch_size']} does not fit in memory "
            f"({str(e).splitlines()[0][:200]}): choose a smaller width, depth or batch size.",
            params=("width", "depth"),
        ) from None


class _Tally:
    """An epoch's running loss and accuracy. Each step adds device tensors; :meth:`flush` reads the pending ones
    back in one transfer, checks them, sums them in Python (the same numbers, in the same order, as reading
    every step) and emits their step events."""

    def __init__(self, epoch: int, epochs: int, steps: int, emit, diverged):
        self.epoch, self.epochs, self.steps, self.emit, self.diverged = epoch, epochs, steps, emit, diverged
        self.pending: list[tuple[int, float, torch.Tensor, torch.Tensor, int]] = []
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0

    def add(self, step: int, lr: float, loss: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        self.pending.append((step, lr, loss, correct, count))

    def flush(self) -> None:
        if not self.pending:
            return
        if len(self.pending) == 1:
            losses, corrects = [self.pending[0][2].item()], [int(self.pending[0][3])]
        else:
            losses = torch.stack([p[2] for p in self.pending]).tolist()
            corrects = torch.stack([p[3] for p in self.pending]).tolist()
        for (step, lr, _, _, count), loss, correct in zip(self.pending, losses, corrects):
            if not math.isfinite(loss):
                self.pending = []
                self.diverged(loss, self.epoch, step)
            self.loss_sum += loss * count
            self.correct += int(correct)
            self.seen += count
            self.emit(TrainEvent("step", self.epoch + 1, self.epochs, step + 1, self.steps, self.loss_sum / self.seen,
                                 self.correct / self.seen, lr))
        self.pending = []


def _diverged(loss: float, epoch: int, step: int, lr, out: Path):
    raise TrainingError(
        f"loss became {loss} at epoch {epoch + 1}, step {step + 1}: lower train.lr "
        f"(now {lr}) or add warm-up epochs. The last good epoch is saved in {out / RESUME_DIR}."
    )


def _autocast(dev: torch.device, precision: str):
    if dev.type == "cpu":  # as it always was: a disabled bf16 autocast for fp32
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    if precision not in AMP_DTYPES:
        return nullcontext()
    return torch.autocast(dev.type, dtype=AMP_DTYPES[precision])


def _grad_scaler(dev: torch.device):
    """fp16 autocast's loss scaling (torch.amp.GradScaler; torch.cuda.amp's before torch 2.3)."""
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        return amp.GradScaler(dev.type)
    return torch.cuda.amp.GradScaler()


@contextmanager
def _device_settings(dev: torch.device):
    """cuDNN picks the fastest convolution algorithms for the run's fixed shapes (restored afterwards)."""
    if dev.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def _threads(threads: int | ThreadPolicy | None, resumed: int | None, macs: float | None,
             check_only: bool = False) -> ThreadChoice | None:
    """The run's thread count: as asked, else the one the interrupted run chose, else the rule's."""
    if isinstance(threads, int) and not isinstance(threads, bool):
        if threads < 1:
            raise TrainingError(f"threads must be at least 1, not {threads}", params=("threads",))
        return ThreadChoice(threads, "as asked")
    if check_only:
        if threads is not None and not isinstance(threads, ThreadPolicy):
            raise TrainingError(f"threads must be a count or a ThreadPolicy, not {threads!r}", params=("threads",))
        return None
    if resumed:
        return ThreadChoice(int(resumed), "as the run chose when it started")
    return choose_threads(macs, threads)


def _device_record(dev: torch.device, devices: list[str]) -> dict:
    """The device a run trained on; with every device it ran on when a resume moved it (``segments``)."""
    record = describe_device(dev)
    if len(set(devices)) > 1:
        record["segments"] = list(devices)
    return record


def train(
    recipe: Recipe,
    out: str | Path,
    data_dir: str | Path | None = None,
    on_event: Callable[[TrainEvent], None] | None = None,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    threads: int | ThreadPolicy | None = None,
) -> TrainResult:
    """Train ``recipe`` into the checkpoint folder ``out``, resuming from ``out/.resume`` if present.

    ``device``: where to train (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``; see
    :func:`~hubcompare.models.devices.resolve_device`); the checkpoint records it.
    ``threads``: torch CPU threads; None or a :class:`~hubcompare.models.threads.ThreadPolicy`: chosen by
    :func:`~hubcompare.models.threads.choose_threads` from the model's work per step (and the cores idle now),
    except that a resumed run keeps the count it started with. The checkpoint records it (``torch_threads``);
    torch's count is restored afterwards.
    """
    previous = torch.get_num_threads()
    try:
        return _train(recipe, out, data_dir, on_event, overwrite, device, threads)
    finally:
        torch.set_num_threads(previous)


def _train(recipe: Recipe, out, data_dir, on_event, overwrite: bool, device, threads) -> TrainResult:
    _threads(threads, None, None, check_only=True)
    dev = resolve_device(device)
    out = Path(out)
    _check_out(out)
    emit = on_event or (lambda e: None)
    resume_path = out / RESUME_DIR / RESUME_FILE
    if overwrite and out.exists():
        for name in (CONFIG_FILE, RESUME_DIR):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if (out / CONFIG_FILE).exists():
        raise TrainingError(f"{out} already holds a finished checkpoint: retrain it (overwrite), or choose another "
                            "output folder (out).", params=("overwrite", "out"))

    t, aug, seed = recipe["train"], recipe["augment"], recipe["train"]["seed"]
    dataset = recipe["data"]["dataset"]
    train_full = load_dataset(dataset, "train", data_dir)
    test = load_dataset(dataset, "test", data_dir)
    if train_full.classes != test.classes or train_full.image_shape != test.image_shape:
        raise TrainingError(f"{dataset}: train and test splits disagree on classes or image shape")
    train_data = shuffle_labels(stratified_subset(train_full, recipe["data"]["fraction"], seed),
                                recipe["data"]["shuffle_labels"], seed)

    precision = resolve_precision(t["precision"], dev)  # bf16/fp16: autocast (fp32 master weights)
    torch.manual_seed(seed)
    # channels_last is ~1.4x faster for these convolutions on CPU (oneDNN) and what GPU tensor cores want;
    # the model is initialised on the CPU (same weights on every device); weights are saved contiguous
    with _fits_in_memory(recipe):
        model = build_model(recipe, train_data)
        macs = forward_macs(model, train_data.image_shape) * t["batch_size"] if dev.type == "cpu" else None
        model = model.to(dev, memory_format=torch.channels_last)
        images, labels = train_data.images.to(dev), train_data.labels.to(dev)
    optimizer = torch.optim.SGD(
        _param_groups(model, float(t["weight_decay"]), t["weight_decay_on"]), lr=float(t["lr"]), momentum=float(t["momentum"]), nesterov=t["nesterov"]
    )
    scaler = _grad_scaler(dev) if precision == "fp16" else None
    generator = torch.Generator().manual_seed(seed)
    state = {"epochs_done": 0, "history": [], "elapsed_s": 0.0, "resumed_at": []}
    if resume_path.is_file():
        state = _load_resume(resume_path, model, optimizer, generator, recipe, scaler)
        state["resumed_at"].append(state["epochs_done"])
    state.setdefault("devices", []).append(str(dev))
    choice = _threads(threads, state.get("threads"), macs)
    torch.set_num_threads(choice.threads)
    state["threads"] = choice.threads

    n, bs, epochs = len(train_data), t["batch_size"], t["epochs"]
    steps = math.ceil(n / bs) - (1 if n % bs == 1 else 0)  # a trailing batch of 1 would break batch norm
    sync_every = SYNC_STEPS.get(dev.type, ACCELERATOR_SYNC_STEPS)
    emit(TrainEvent("start", state["epochs_done"], epochs, steps=steps, resumed_from=state["epochs_done"], num_train=n,
                    threads=choice))

    with _device_settings(dev):
        for epoch in range(state["epochs_done"], epochs):
            started = time.perf_counter()
            model.train()
            order = torch.randperm(n, generator=generator)
            tally = _Tally(epoch, epochs, steps, emit, lambda value, e, s: _diverged(value, e, s, t["lr"], out))
            for step in range(steps):
                lr = lr_at_epoch(epoch, recipe, step, steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                idx = order[step * bs : (step + 1) * bs].to(dev, non_blocking=True)
                x = pad_crop_flip(to_float(images[idx]), aug["pad"], aug["flip"], generator, aug["pad_mode"], aug["offsets"])
                x = x.contiguous(memory_format=torch.channels_last)
                y = labels[idx]
                with _autocast(dev, precision):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                tally.add(step, lr, loss.detach(), (logits.argmax(1) == y).sum(), len(idx))
                if len(tally.pending) >= sync_every:
                    tally.flush()  # on the CPU: every step, before the update (a diverged loss stops it)
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
            tally.flush()  # waits for the device: the epoch's time is its work
            loss_sum, correct, seen = tally.loss_sum, tally.correct, tally.seen
            state["elapsed_s"] += time.perf_counter() - started
            state["history"].append(
                {"epoch": epoch + 1, "lr": lr, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                 "seconds": round(time.perf_counter() - started, 3)}
            )
            state["epochs_done"] = epoch + 1
            if scaler is not None:
                state["grad_scaler"] = scaler.state_dict()
            _save_resume(resume_path, model, optimizer, generator, recipe, state)
            emit(TrainEvent("epoch", epoch + 1, epochs, steps, steps, loss_sum / seen, correct / seen, lr))

    emit(TrainEvent("evaluate", epochs, epochs, 0, len(test.ids)))  # step/steps: test examples done / in all
    model = model.to(memory_format=torch.contiguous_format)
    preds = predict(model, test, batch_size=t["eval_batch_size"], device=dev,
                    on_batch=lambda done, n: emit(TrainEvent("evaluate_batch", epochs, epochs, done, n)))
    model = model.to("cpu")  # checkpoints hold CPU tensors
    last = state["history"][-1]
    meta = ModelMeta(
        architecture=ARCHITECTURE,
        depth=recipe["model"]["depth"],
        width=recipe["model"]["width"],
        bn_momentum=recipe["model"]["bn_momentum"],
        bn_eps=recipe["model"]["bn_eps"],
        in_chans=train_data.image_shape[0],
        num_classes=train_data.num_classes,
        class_names=list(train_data.classes),
        dataset=dataset,
        data_fraction=parse_fraction(recipe["data"]["fraction"]),
        seed=seed,
        epochs=epochs,
        test_accuracy=preds.accuracy,
        train_accuracy=last["train_accuracy"],
        train_loss=last["loss"],
        train_data=train_data.describe(),
        test_data=test.describe(),
        recipe=recipe.to_dict(),
        recipe_hash=recipe.hash,
        history=state["history"],
        wall_time_s=round(state["elapsed_s"], 2),
        resumed_at_epochs=state["resumed_at"],
        precision=precision,
        device=_device_record(dev, state["devices"]),
        torch_threads=torch.get_num_threads(),
        package_versions=package_versions(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_checkpoint(out, model, meta, preds)
    shutil.rmtree(out / RESUME_DIR, ignore_errors=True)
    emit(TrainEvent("done", epochs, epochs, accuracy=preds.accuracy))
    return TrainResult(out, preds.accuracy, last["train_accuracy"], meta.wall_time_s, meta)


# --- resume state: one safetensors file (tensors + JSON metadata), written atomically ----------
# Always CPU tensors: a state written on one device loads on any other (each tensor is moved to where its
# parameter lives). The generator is the CPU one on every device.
def _save_resume(path: Path, model, optimizer, generator: torch.Generator, recipe: Recipe, state: dict) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model.{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    for p, s in optimizer.state.items():
        if s.get("momentum_buffer") is not None:
            tensors[f"momentum.{names[id(p)]}"] = s["momentum_buffer"].to("cpu").contiguous()
    tensors["rng.generator"] = generator.get_state()
    meta = {"recipe_hash": recipe.hash, "state": json.dumps(state)}
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def _load_resume(path: Path, model, optimizer, generator: torch.Generator, recipe: Recipe, scaler=None) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(meta["state"])
    except Exception as e:  # any unreadable state means we cannot resume safely
        raise TrainingError(f"cannot resume from {path} ({e}): delete {path.parent} or start over (overwrite).",
                            params=("overwrite",)) from e
    if meta.get("recipe_hash") != recipe.hash:
        raise TrainingError(
            f"{path.parent} belongs to a run with a different recipe (hash {meta.get('recipe_hash')} vs {recipe.hash}): "
            "resume with the same recipe and overrides, start over (overwrite), or choose another output folder (out).",
            params=("overwrite", "out"),
        )
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    params = dict(model.named_parameters())
    for k, v in tensors.items():
        if k.startswith("momentum."):
            param = params[k[len("momentum."):]]
            optimizer.state[param]["momentum_buffer"] = v.to(param.device, copy=True)
    generator.set_state(tensors["rng.generator"])
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    return state
