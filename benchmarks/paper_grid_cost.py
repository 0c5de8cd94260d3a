"""The paper's own grid, on paper: what it costs on this machine and on N GPUs through `hubcompare grid`.

The paper trains CIFAR ResNets over depths 14-164, widths 1x-10x and three data fractions (all, 1/4, 1/16),
several seeds each, 300 epochs. This script prices that grid from counted FLOPs and measured throughput:

1. **FLOPs per image**, counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over one training
   step (forward, cross-entropy, backward) of hubcompare's ``cifar_resnet`` on the meta device (no memory, no
   compute), for every depth x width. A run costs ``train FLOPs/image x 50,000 x fraction x epochs`` plus one
   forward over its training subset and the 10,000 test images (the trainer's final evaluation).
2. **This machine's trainer throughput**, measured: one epoch of the real trainer (``hubcompare.training.loop.
   train``, as ``benchmarks/train_throughput.py`` times it) on synthetic CIFAR-shaped images for a few models,
   giving achieved FLOP/s; ``--runs`` adds finished checkpoint folders (their ``config.json`` holds the epochs,
   the examples, the wall time and the threads) as a cross-check from real runs.
3. **GPUs**: no GPU is attached here, so the GPU rate is an input: ``--gpu-img-per-s`` takes the trainer's
   images/s for ResNet-20 1x that ``benchmarks/gpu_check.py`` prints on a GPU (converted to FLOP/s with the
   counted FLOPs); without it, the table shows three assumed effective rates, named as assumptions. Small
   models use a GPU far below its peak, so one rate over the whole grid over-prices the big models (their
   larger kernels run nearer the peak) and is an upper bound for them.
4. **N GPUs through `hubcompare grid --backend ray --gpus-per-run 1`**: one run per GPU at a time, scheduled
   longest-first (what a Ray queue of the grid's runs sorted by cost does), with the per-run overhead that
   ``benchmarks/grid_scaling.py`` measured (~1 s: start-up, data, evaluation, checkpoint), as the makespan.

    .venv/bin/python benchmarks/paper_grid_cost.py
    .venv/bin/python benchmarks/paper_grid_cost.py --runs runs/cifar10jpeg-r14-f16-e200/*/ --gpu-img-per-s 30000
"""

from __future__ import annotations

import argparse
import heapq
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from train_throughput import hubcompare_epoch

import hubcompare  # noqa: F401  (registers cifar_resnet with timm)
from hubcompare.training.loop import resolve_precision
from hubcompare.training.recipes import load_recipe

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
DEPTHS = (14, 20, 26, 32, 38, 44, 56, 62, 110, 164)  # the paper's depths (6n + 2)
WIDTHS = (1, 2, 4, 8, 10)
FRACTIONS = (1.0, 0.25, 0.0625)
ASSUMED_GPU_TFLOPS = (5.0, 20.0, 80.0)  # effective, not peak: used only without --gpu-img-per-s
GPU_COUNTS = (1, 8, 64)


@dataclass(frozen=True)
class Flops:
    forward: float  # per image
    train: float  # per image: forward + loss + backward
    params: int


def count_flops(depth: int, width: int) -> Flops:
    """Counted FLOPs per image of one training step and one forward, on the meta device."""
    with torch.device("meta"):
        model = timm.create_model("cifar_resnet", depth=depth, width=width, num_classes=10)
        images, labels = torch.empty(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images)
    forward = counter.get_total_flops() / 2
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(images), labels).backward()
    return Flops(forward, counter.get_total_flops() / 2, sum(p.numel() for p in model.parameters()))


def run_flops(f: Flops, fraction: float, epochs: int) -> float:
    train_images = round(CIFAR_TRAIN * fraction)
    return f.train * train_images * epochs + f.forward * (train_images + CIFAR_TEST)


def measure_cpu(points, images: int, threads: int) -> list[tuple[str, float, float]]:
    """(model, images/s, achieved FLOP/s) of the real trainer, one epoch each on synthetic images."""
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, images).astype(np.int64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for split, n in (("train", None), ("test", 256)):
            np.savez(tmp / f"{split}.npz", images=pixels[:n], labels=labels[:n])
        for depth, width in points:
            recipe = load_recipe("cifar10", {"model.depth": depth, "model.width": width, "train.epochs": 1,
                                             "train.warmup_epochs": 0, "data.dataset": "cifar10"})
            per_s = hubcompare_epoch(recipe, tmp, tmp / f"r{depth}x{width}")
            rows.append((f"ResNet-{depth} {width}x", per_s, per_s * count_flops(depth, width).train))
    return rows


def from_runs(folders) -> list[tuple[str, float, int]]:
    """(run, achieved FLOP/s, threads) of finished checkpoint folders, from their config.json."""
    rows = []
    for folder in folders:
        config = Path(folder) / "config.json"
        if not config.is_file():
            continue
        meta = json.loads(config.read_text()).get("hubcompare", {})
        if not meta.get("wall_time_s"):
            continue
        f = count_flops(meta["depth"], meta["width"])
        n = meta["train_data"]["num_examples"]
        done = f.train * n * meta["epochs"] + f.forward * (n + meta["test_data"]["num_examples"])
        rows.append((Path(folder).name, done / meta["wall_time_s"], meta.get("torch_threads") or 1))
    return rows


def makespan(costs_s: list[float], gpus: int) -> float:
    """Longest-first list scheduling of the runs over `gpus` slots: the time the last one finishes."""
    slots = [0.0] * gpus
    for cost in sorted(costs_s, reverse=True):
        heapq.heappush(slots, heapq.heappop(slots) + cost)
    return max(slots)


def human(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.0f} s"


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def images_per_second(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of images per second (got {text})")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=positive, default=3, help="seeds per grid point")
    ap.add_argument("--epochs", type=positive, default=300, help="epochs per run (the authors' default)")
    ap.add_argument("--images", type=positive, default=1024, help="synthetic images in the measured CPU epoch")
    ap.add_argument("--threads", type=positive, default=torch.get_num_threads(), help="torch threads for the CPU measurement")
    ap.add_argument("--runs", nargs="*", default=[], help="finished checkpoint folders to cross-check the CPU rate")
    ap.add_argument("--gpu-img-per-s", type=images_per_second, default=None,
                    help="the trainer's images/s for ResNet-20 1x on a GPU, as benchmarks/gpu_check.py prints it")
    ap.add_argument("--overhead-s", type=float, default=1.0, help="per-run overhead (benchmarks/grid_scaling.py: ~1 s)")
    args = ap.parse_args()

    start = time.perf_counter()
    flops = {(d, w): count_flops(d, w) for d in DEPTHS for w in WIDTHS}
    print(f"Counted FLOPs per image (training step = forward + loss + backward; {time.perf_counter() - start:.1f} s "
          f"on the meta device), GFLOP:")
    print(f"{'depth':>6} " + " ".join(f"{f'{w}x train':>11} {f'{w}x fwd':>8}" for w in WIDTHS))
    for d in DEPTHS:
        print(f"{d:>6} " + " ".join(f"{flops[d, w].train / 1e9:>11.3f} {flops[d, w].forward / 1e9:>8.3f}" for w in WIDTHS))
    print(f"train / forward: {min(f.train / f.forward for f in flops.values()):.2f}-"
          f"{max(f.train / f.forward for f in flops.values()):.2f}; parameters "
          f"{flops[14, 1].params / 1e6:.2f} M (ResNet-14 1x) to {flops[164, 10].params / 1e6:.0f} M (ResNet-164 10x)")

    runs = [(d, w, fr) for d in DEPTHS for w in WIDTHS for fr in FRACTIONS for _ in range(args.seeds)]
    costs = [run_flops(flops[d, w], fr, args.epochs) for d, w, fr in runs]
    total = sum(costs)
    print(f"\nThe grid: {len(DEPTHS)} depths x {len(WIDTHS)} widths ({', '.join(f'{w}x' for w in WIDTHS)}) x "
          f"{len(FRACTIONS)} fractions x {args.seeds} seeds = {len(runs)} runs of {args.epochs} epochs")
    for fr in FRACTIONS:
        part = sum(c for c, (_, _, f) in zip(costs, runs) if f == fr)
        print(f"  fraction {fr:g}: {part / 1e15:,.0f} PFLOP")
    print(f"  total {total / 1e15:,.0f} PFLOP; the largest run (ResNet-164 10x, all data) "
          f"{max(costs) / 1e15:,.1f} PFLOP, the smallest {min(costs) / 1e12:,.1f} TFLOP")

    precision = resolve_precision(load_recipe("cifar10")["train"]["precision"])
    print(f"\nThis machine ({args.threads} threads, precision {precision}; the trainer, one epoch of {args.images} "
          f"synthetic images):")
    measured = measure_cpu([(14, 1), (20, 2), (56, 2)], args.images, args.threads)
    for name, per_s, rate in measured:
        print(f"  {name:<16} {per_s:>8.1f} images/s  {rate / 1e9:>6.1f} GFLOP/s achieved")
    for name, rate, threads in from_runs(args.runs):
        print(f"  real run {name}: {rate / 1e9:.1f} GFLOP/s on {threads} thread(s) (from its config.json)")
    cpu_rate = max(rate for _, _, rate in measured)
    print(f"  the grid at the best measured rate ({cpu_rate / 1e9:.1f} GFLOP/s): {human(total / cpu_rate)} "
          f"(one run of ResNet-164 10x on all data: {human(max(costs) / cpu_rate)})")

    if args.gpu_img_per_s:
        rates = [(args.gpu_img_per_s * flops[20, 1].train, f"measured: {args.gpu_img_per_s:,.0f} images/s of ResNet-20 1x")]
    else:
        rates = [(t * 1e12, "assumed, not measured (run benchmarks/gpu_check.py on a GPU, pass --gpu-img-per-s)")
                 for t in ASSUMED_GPU_TFLOPS]
    print(f"\nOn N GPUs through `hubcompare grid --backend ray --gpus-per-run 1` (longest run first, "
          f"{args.overhead_s:g} s overhead per run):")
    print(f"  {'effective TFLOP/s':>17}  {'GPU-hours':>10}  " + "  ".join(f"{f'{n} GPU(s)':>14}" for n in GPU_COUNTS))
    for rate, source in rates:
        seconds = [c / rate + args.overhead_s for c in costs]
        spans = "  ".join(f"{human(makespan(seconds, n)):>14}" for n in GPU_COUNTS)
        print(f"  {rate / 1e12:>17.1f}  {sum(seconds) / 3600:>10,.0f}  {spans}   {source}")
    print("  (with 64 GPUs the largest runs set the makespan: ResNet-164 10x on all data is one run on one GPU)")


if __name__ == "__main__":
    main()
