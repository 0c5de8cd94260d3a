"""GPU check: the CUDA paths that the test suite (which runs without a GPU) can only run on the CPU.

On one CUDA GPU, in well under 8 minutes, it prints:

1. **CKA, CPU vs GPU**: the same two models (a seeded ResNet-20 1x and 2x, BatchNorm statistics from 8
   images, stem + every block output) on the same minibatches of synthetic CIFAR-shaped images, compared
   with ``compare(device="cpu")`` and ``compare(device="cuda")``: the largest |difference| of the CKA
   matrices, and each one's time;
2. **CKA error on the GPU against the float64 reference**: the same GPU float32 activations, float64 Gram
   matrices and the recipe's three-term unbiased HSIC_1 (benchmarks/cka_speed.py's reference), for both
   ways of forming the HSIC products (``float64`` and ``float32`` runs summed in float64) and, for contrast,
   with TF32 left on. The 1e-6 bound is checked here (the exit code is 1 when it fails);
3. **HSIC products**: the time of one minibatch's all-pairs HSIC product in float64 and in float32 runs, for
   many layers (where float64 would dominate on a GPU with slow float64), and their difference;
4. **training throughput** (images/s of the second epoch, so cuDNN's algorithm search is left out): the
   hubcompare trainer on the GPU (data and augmentation on the GPU, ``train.precision: auto``) vs a plain
   PyTorch GPU loop on the same model fed by a DataLoader with torchvision transforms (worker processes,
   pinned memory), in fp32 and with the trainer's autocast + channels-last (the trainer's images/s, passed
   to ``benchmarks/paper_grid_cost.py --gpu-img-per-s``, prices the paper's grid on GPUs);
5. the **peak GPU memory** of every part.

Without a GPU it says so, runs its CPU parts at the ``--quick`` sizes (the accelerator pipeline forced on
the CPU against the float64 reference, the HSIC products, the trainer vs the plain loop on the CPU) and
exits 0.

    .venv/bin/python benchmarks/gpu_check.py            # on a machine with a CUDA GPU
    .venv/bin/python benchmarks/gpu_check.py --quick    # small sizes (about a minute on a GPU)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cka_speed import hsic_all, make_images, make_model  # noqa: E402  (the same models and reference)
from train_throughput import PilCifar  # noqa: E402  (what torchvision's CIFAR10 does per item)

import hubcompare  # noqa: E402,F401  (registers cifar_resnet)
from hubcompare.data.datasets import ImageDataset, load_dataset  # noqa: E402
from hubcompare.models import devices  # noqa: E402
from hubcompare.models.devices import describe_device, exact_float32, fast_float64, peak_memory_bytes  # noqa: E402
from hubcompare.similarity import cka as cka_module  # noqa: E402
from hubcompare.similarity import engine  # noqa: E402
from hubcompare.similarity.cka import MinibatchCKA  # noqa: E402
from hubcompare.similarity.engine import CompareModel, compare, minibatch_plan  # noqa: E402
from hubcompare.training.loop import AMP_DTYPES, TrainEvent, build_model, resolve_precision, train  # noqa: E402
from hubcompare.training.recipes import load_recipe  # noqa: E402

BOUND = 1e-6
MODELS = ("r20w1s0", "r20w2s1")
SIZES = {  # examples compared, HSIC layers, training images, DataLoader workers
    "full": {"cka_examples": 4096, "hsic_layers": 400, "train_images": 50_000, "workers": 8},
    "quick": {"cka_examples": 512, "hsic_layers": 100, "train_images": 5_000, "workers": 4},
    "cpu": {"cka_examples": 256, "hsic_layers": 40, "train_images": 512, "workers": 0},
}


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


@contextmanager
def measured(dev: torch.device):
    """Times the block (after the device's queued work is done) and records its peak GPU memory."""
    out = {}
    devices.synchronize(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    yield out
    devices.synchronize(dev)
    out["seconds"] = time.perf_counter() - t0
    out["peak"] = peak_memory_bytes(dev)


# --- 1-2: CKA ----------------------------------------------------------------------------------------------
def cka_models(images: torch.Tensor) -> list[CompareModel]:
    return [CompareModel(k, make_model(k, images), layers=["stem", "*.out"]) for k in MODELS]


def reference(models: list[CompareModel], images: torch.Tensor, batch_size: int, dev: torch.device) -> np.ndarray:
    """The cross-model CKA matrix in float64 from the float32 activations the models give on ``dev``."""
    sums: dict = {}
    nets = [m.model.to(dev) for m in models]
    taps = [["stem"] + [t for t in net.tap_names if t.endswith(".out")] for net in nets]
    with torch.no_grad(), exact_float32():
        for mb in minibatch_plan(len(images), batch_size, passes=1, seed=0):
            x = images[mb.indices].to(dev).to(torch.float32).div_(255.0)
            grams = []
            for net, names in zip(nets, taps):
                feats = [a.reshape(len(mb.indices), -1).double() for a in net.forward_taps(x, names).values()]
                g = torch.stack([f @ f.T for f in feats])
                g.diagonal(dim1=1, dim2=2).zero_()
                grams.append(g)
            for i, j in ((0, 0), (1, 1), (0, 1)):
                h = hsic_all(grams[i], grams[j])
                sums[i, j] = sums[i, j] + h if (i, j) in sums else h
    for net in nets:
        net.to("cpu")
    return (sums[0, 1] / torch.sqrt(torch.outer(sums[0, 0].diag(), sums[1, 1].diag()))).cpu().numpy()


@contextmanager
def tf32_left_on():
    """For contrast only: what the CKA would be if TF32 were not turned off (PyTorch's cuDNN default)."""
    flags = devices._tf32_flags()
    saved = [getattr(o, a) for o, a, _ in flags]
    on = ["tf32" if isinstance(v, str) else True for _, _, v in flags]
    patched = (engine, cka_module)
    originals = [m.exact_float32 for m in patched]
    try:
        for (o, a, _), v in zip(flags, on):
            setattr(o, a, v)
        for m in patched:
            m.exact_float32 = nullcontext
        yield
    finally:
        for m, f in zip(patched, originals):
            m.exact_float32 = f
        for (o, a, _), v in zip(flags, saved):
            setattr(o, a, v)


def check_cka(dev: torch.device, n: int, batch_size: int, gpu: bool) -> bool:
    images = make_images(n)
    ds = ImageDataset("synthetic-cifar", "test", images, torch.zeros(n, dtype=torch.int64), [f"c{i}" for i in range(10)],
                      [f"syn-{i}" for i in range(n)])
    models = cka_models(images)
    run = lambda **kw: compare(models, ds, batch_size=batch_size, **kw)  # noqa: E731
    print(f"\n== CKA: ResNet-20 1x vs 2x, stem + block outputs, {n} synthetic CIFAR-shaped images, batch {batch_size}")
    with measured(torch.device("cpu")) as t_cpu:
        on_cpu = run(device="cpu")
    rows = [("CPU pipeline on the CPU", on_cpu, t_cpu)]
    variants = [("float64", "float64 HSIC products"), ("float32", "float32 HSIC runs, summed in float64")]
    for products, label in variants:
        with measured(dev) as t:
            rows.append((f"{'GPU' if gpu else 'accelerator pipeline on the CPU'}, {label}",
                         run(device=dev, pipeline="accelerator", hsic_products=products), t))
    if gpu:
        with tf32_left_on(), measured(dev) as t:
            rows.append(("GPU with TF32 left on (contrast)", run(device=dev, pipeline="accelerator"), t))
    print("float64 reference ...", flush=True)
    ref = reference(models, images, batch_size, dev)
    ref_cpu = reference(models, images, batch_size, torch.device("cpu")) if gpu else ref
    chosen = "float64" if fast_float64(dev) else "float32"
    print(f"({'GPU' if gpu else 'device'} default HSIC products here: {chosen}; fast float64: {fast_float64(dev)})")
    print(f"{'variant':<70} {'seconds':>8} {'peak GPU':>10} {'max |err| vs float64 ref':>25} {'max |diff| vs CPU':>18}")
    ok = True
    for i, (label, comp, t) in enumerate(rows):
        value = comp.pair(0, 1).value
        err = float(np.abs(value - (ref_cpu if i == 0 else ref)).max())
        diff = float(np.abs(value - on_cpu.pair(0, 1).value).max())
        verdict = "" if "contrast" in label else (" ok" if err < BOUND else " FAIL")
        ok &= "contrast" in label or err < BOUND
        print(f"{label:<70} {t['seconds']:>8.2f} {mib(t['peak']):>10} {err:>22.2e}{verdict:<3} {diff:>18.2e}")
    if gpu:
        print(f"the float64 references from the CPU's and the GPU's activations differ by at most "
              f"{float(np.abs(ref - ref_cpu).max()):.2e} (the forward passes themselves)")
    return ok


# --- 3: HSIC products ----------------------------------------------------------------------------------
def check_hsic(dev: torch.device, layers: int, n: int = 256, repeats: int = 5) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, 64, generator=g)
    feats = [(base @ torch.randn(64, 96, generator=g) + torch.randn(n, 96, generator=g) * (1 + i % 7)).clamp_min(0)
             for i in range(layers)]
    at64 = devices.float64_device(dev)
    u = torch.stack([cka_module.u_center(cka_module.gram(f)) for f in feats]).to(at64)
    print(f"\n== HSIC products of one minibatch: {layers} layers, n = {n} ({u.numel() * 8 / 2**20:,.0f} MiB of float64 Grams)")
    out = {}
    for products in ("float64", "float32"):
        times = []
        for _ in range(repeats + 1):
            with measured(at64) as t:
                out[products] = MinibatchCKA.batch_hsic(u, products)
            times.append(t["seconds"])
        print(f"{products:>8}: median {statistics.median(times[1:]) * 1e3:8.2f} ms  (peak GPU {mib(t['peak'])})")
    norm = lambda h: (h / torch.sqrt(torch.outer(h.diag(), h.diag()))).cpu()  # noqa: E731
    print(f"max |CKA(float32 runs) - CKA(float64)| = {float((norm(out['float32']) - norm(out['float64'])).abs().max()):.2e}")


# --- 4: training throughput ----------------------------------------------------------------------------
def trainer_run(recipe, data_dir: Path, out: Path, dev: torch.device) -> tuple[float, int | None]:
    marks: dict = {}

    def on_event(e: TrainEvent):
        if e.kind == "start":
            marks["n"] = e.num_train
        elif e.kind == "epoch":
            marks[e.epoch] = time.perf_counter()

    devices.synchronize(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    train(recipe, out, data_dir=data_dir, on_event=on_event, overwrite=True, device=dev)
    return marks["n"] / (marks[2] - marks[1]), peak_memory_bytes(dev)


def plain_run(recipe, data, images_hwc, labels, dev: torch.device, workers: int, amp: str | None) -> tuple[float, int | None]:
    """The usual PyTorch loop: DataLoader + torchvision transforms, batches copied to the GPU; two epochs."""
    torch.manual_seed(0)
    model = build_model(recipe, data).to(dev)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    t = recipe["train"]
    opt = torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    scaler = torch.amp.GradScaler(dev.type) if amp == "fp16" else None
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4, padding_mode="reflect"), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor()])
    loader = DataLoader(PilCifar(images_hwc, labels, tf), batch_size=t["batch_size"], shuffle=True, num_workers=workers,
                        pin_memory=dev.type == "cuda", persistent_workers=workers > 0, drop_last=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model.train()
    ends = []
    for _ in range(2):
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if amp:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=AMP_DTYPES[amp]) if amp else nullcontext():
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
        devices.synchronize(dev)
        ends.append(time.perf_counter())
    return (len(labels) // t["batch_size"]) * t["batch_size"] / (ends[1] - ends[0]), peak_memory_bytes(dev)


def check_training(dev: torch.device, n: int, workers: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    recipe = load_recipe("cifar10", {"model.depth": 20, "model.width": 1, "train.epochs": 2, "train.warmup_epochs": 0,
                                     "data.dataset": "cifar10"})
    precision = resolve_precision(recipe["train"]["precision"], dev)
    print(f"\n== Training throughput: ResNet-20 (1x), batch {recipe['train']['batch_size']}, {n} synthetic CIFAR-shaped "
          f"images, second epoch; recipe precision {recipe['train']['precision']} -> {precision} here")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for split, k in (("train", None), ("test", 1000)):
            np.savez(tmp / f"{split}.npz", images=images[:k], labels=labels[:k])
        data = load_dataset("cifar10", "train", tmp)
        rows = [(f"hubcompare trainer ({precision}, data + augmentation on the device)", *trainer_run(recipe, tmp, tmp / "run", dev))]
        amp = precision if precision in AMP_DTYPES else None
        rows.append((f"plain loop, DataLoader workers={workers}, fp32", *plain_run(recipe, data, images, labels, dev, workers, None)))
        if amp:
            rows.append((f"plain loop, DataLoader workers={workers}, {amp} autocast + channels-last",
                         *plain_run(recipe, data, images, labels, dev, workers, amp)))
    best_plain = max(r[1] for r in rows[1:])
    print(f"{'variant':<66} {'images/s':>10} {'vs best plain':>14} {'peak GPU':>10}")
    for label, ips, peak in rows:
        print(f"{label:<66} {ips:>10,.0f} {ips / best_plain:>13.2f}x {mib(peak):>10}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--device", default="cuda", help="the GPU to check (default: cuda, the current one)")
    ap.add_argument("--batch-size", type=int, default=256, help="CKA minibatch size")
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    gpu = torch.cuda.is_available()
    print(f"torch {torch.__version__} (CUDA build {torch.version.cuda}), {threads} CPU threads")
    if gpu:
        dev = devices.resolve_device(args.device)
        sizes = SIZES["quick" if args.quick else "full"]
        print(f"GPU: {describe_device(dev)}")
    else:
        dev = torch.device("cpu")
        sizes = SIZES["cpu"]
        print("No CUDA GPU here: running the CPU parts only, at small sizes (the accelerator pipeline forced on the CPU, "
              "the HSIC products, the trainer vs a plain loop on the CPU). Run this on a machine with a GPU for the check.")
    started = time.perf_counter()
    ok = check_cka(dev, sizes["cka_examples"], min(args.batch_size, sizes["cka_examples"]), gpu)
    check_hsic(dev, sizes["hsic_layers"])
    check_training(dev, sizes["train_images"], sizes["workers"])
    print(f"\n{'all CKA errors within' if ok else 'FAIL: a CKA error is not within'} {BOUND:g} of the float64 reference; "
          f"{time.perf_counter() - started:.0f} s in all")
    return 0 if ok or not gpu else 1


if __name__ == "__main__":
    sys.exit(main())
