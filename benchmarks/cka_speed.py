"""Cross-model CKA speed, memory and accuracy: hubcompare vs the bare forward passes vs PyPI CKA tools.

The goal (issue #15): a cross-CKA that costs no more than the naive NCHW float32 forward passes of its models
alone (``floor``), Grams included, with max |error| <= 1e-6. Every group prints PASS/MISS for it, with the
variant ``hubcompare-nchw`` beside it: the comparison as it ran before the fast forward (NCHW, BatchNorm not
fused, Gram products through BLAS), measured in the same run.

The main figure: linear minibatch CKA between a ResNet-20 (1x) and a ResNet-20 (2x), stem + every
block output (10 layers each), on 2,048 CIFAR-shaped synthetic images, batch 256, 2 threads:

- ``floor``        the bare forward passes of both models under ``torch.no_grad``, NCHW float32 (no CKA at all);
- ``floor-fast``   the fastest exact forward of both models alone (issue #24's yardstick: CKA <= 1.3x it):
                   channels-last, conv + BatchNorm (+ ReLU) folded as ``compare`` folds them, inference mode, full
                   float32, no taps, no hooks, no Grams;
- ``hubcompare``   one ``hubcompare.similarity.compare`` call (its default, fast forward: channels-last,
                   conv + BatchNorm + ReLU fused, oneDNN Gram products; the settings record it);
- ``hubcompare-nchw``  the same call with the previous forward: ``memory_format="contiguous"``,
                   ``fuse_batchnorm=False`` and BLAS Gram products;
- ``pytorch-cka``, ``cka-pytorch`` (1 epoch) and ``torch-cka``, the PyPI tools, fed the very same
  minibatches (same seeded shuffle and batch boundaries as ``compare``).

Every run is a fresh subprocess (``--variant``, internal). Timed runs go round-robin over a group's
variants, ``--repeats`` rounds, each after imports, model/data creation and a one-batch warm-up
forward: the figure is their median. Then one run per variant for memory: the growth of peak RSS
(VmHWM) over the RSS just before that run, with glibc given a fixed mmap threshold so that the figure is
reproducible (see ``run_group``).
The third figure is the largest absolute difference from a float64 reference computed
here: the same float32 activations, float64 Gram matrices and the recipe's three-term
unbiased HSIC_1 summed over the same minibatches, CKA = sum HSIC(K,L) / sqrt(sum HSIC(K,K) sum HSIC(L,L)).
Then: three models in one ``compare`` call vs the fastest tool doing the three pairs; a ResNet-56
pair (28 layers each) vs its floor; a timm ``resnet18`` pair (two seeds, random weights, ``--timm-size``
inputs, 64x64 by default) through the hook path (``layers=["act1", "layer?.?"]``: the stem and every block);
and the peak memory of a width-8 ResNet-56 pair (hubcompare and
floor only, on ``--big-examples`` inputs, the memory run only). Models are randomly initialised,
with BatchNorm statistics set from 8 images so activations keep a trained network's scale.

The tools are never project dependencies. They (and what they import at import time that the
project's virtualenv lacks) go into ``benchmarks/.cka-tools``, which only this script puts on
``sys.path``; the script runs this itself when the folder lacks them:

    .venv/bin/python -m pip install --target benchmarks/.cka-tools --no-deps pytorch-cka==1.1.3 \\
        cka-pytorch==1.1.3 torch-cka==0.21 torchmetrics==1.9.0 lightning-utilities==0.15.3 \\
        lightning==2.6.6 seaborn==0.13.2 pandas==3.1.1 python-dateutil tzdata

Times are wall-clock (the median) and, beside them, the process's CPU time (``cpu s``: less sensitive to
other jobs on a shared machine; the x-floor columns use each). Run (from the repository root; the full run
takes tens of minutes on 2 cores, most of it the width-8 ResNet-56 pair and torch-cka):

    .venv/bin/python benchmarks/cka_speed.py                 # full size
    .venv/bin/python benchmarks/cka_speed.py --quick         # tiny smoke run
    .venv/bin/python benchmarks/cka_speed.py --skip-tools    # hubcompare and floors only
    .venv/bin/python benchmarks/cka_speed.py --skip-tools --main-only   # only R20 1x vs 2x (a few minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fnmatch
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

import hubcompare  # noqa: F401  (registers cifar_resnet with timm)
from hubcompare.data.datasets import ImageDataset
from hubcompare.models.devices import exact_float32, memory_format
from hubcompare.models.fusion import fused_inference
from hubcompare.similarity import cka as cka_module
from hubcompare.similarity.engine import CompareModel, compare, minibatch_plan

TOOLS_DIR = Path(__file__).resolve().parent / ".cka-tools"
TOOL_PACKAGES = [
    "pytorch-cka==1.1.3", "cka-pytorch==1.1.3", "torch-cka==0.21",
    # imported when cka_pytorch is imported: metrics.py (torchmetrics), hook_manager.py
    # (lightning.fabric, for an isinstance check), plot.py (seaborn -> pandas)
    "torchmetrics==1.9.0", "lightning-utilities==0.15.3", "lightning==2.6.6",
    "seaborn==0.13.2", "pandas==3.1.1", "python-dateutil", "tzdata",
]
TOOLS = ("pytorch-cka", "cka-pytorch", "torch-cka")
TOOL_NOTES = {  # read from their code (versions above); all three hook modules and use raw, uncentred Grams
    "pytorch-cka": "float32 three-term HSIC_1 on raw Grams (cancellation), per-batch HSIC summed, CKA clamped to [0, 1]",
    "cka-pytorch": "float32 three-term HSIC_1 via a batched n^3 matmul per layer pair, +1e-4 inside the sqrt of the denominator",
    "torch-cka": "float32 HSIC_1 per layer pair in a Python loop, model-2 Grams recomputed for every pair, run under our no_grad",
}
SEED = 0  # compare()'s shuffle seed


# --- data, models, minibatches (identical in every process) ---------------------------------------
def batch_plan(n: int, batch: int, seed: int = SEED) -> list[torch.Tensor]:
    """The example indices of the minibatches compare() feeds in one pass (the library's own plan)."""
    return [mb.indices for mb in minibatch_plan(n, batch, passes=1, seed=seed)]


def make_images(n: int, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1234))


class Batches(torch.utils.data.Dataset):
    """Indexed by a whole minibatch of indices: returns (float input in [0, 1], labels), as compare() feeds."""

    def __init__(self, images: torch.Tensor):
        self.images, self.labels = images, torch.zeros(len(images), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx):
        return self.images[idx].to(torch.float32).div_(255.0), self.labels[idx]


def make_model(key: str, images: torch.Tensor) -> nn.Module:
    """``r{depth}w{width}s{seed}``: a seeded random CIFAR ResNet; ``timm-{name}-s{seed}``: a seeded random timm
    model (10 classes, told to take the images as they are: their size, inputs in [0, 1] unnormalised, as the
    floor feeds them). BatchNorm statistics from 8 images (few, so that this forward's memory stays far below a
    minibatch's)."""
    if key.startswith("timm-"):
        name, seed = re.fullmatch(r"timm-([\w.]+)-s(\d+)", key).groups()
        torch.manual_seed(int(seed))
        model = timm.create_model(name, num_classes=10)
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": tuple(images.shape[1:]), "mean": (0.0, 0.0, 0.0),
                                "std": (1.0, 1.0, 1.0)}
    else:
        depth, width, seed = map(int, re.fullmatch(r"r(\d+)w(\d+)s(\d+)", key).groups())
        torch.manual_seed(seed)
        model = timm.create_model("cifar_resnet", depth=depth, width=width, num_classes=10)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batch
    with torch.no_grad():
        model.train()(images[:8].float() / 255)
    for bn, mom in zip(bns, saved):
        bn.momentum = mom
    return model.eval()


def hub_layers(model: nn.Module) -> list[str]:
    """The layers compared: stem + every block output (native taps for CIFAR ResNets, module hooks for timm's)."""
    return ["stem", "*.out"] if hasattr(model, "forward_taps") else ["act1", "layer?.?"]


def hook_names(model: nn.Module) -> list[str]:
    """The module names ``hub_layers`` picks in a timm model, in forward (= definition) order."""
    return [n for n, _ in model.named_modules() if any(fnmatch.fnmatchcase(n, p) for p in hub_layers(model))]


def block_modules(model: nn.Module, stem: str = "stem") -> list[str]:
    """Module names of stem + every block output, for hook-based tools (same tensors as hubcompare's taps)."""
    n = model.blocks_per_stage
    return [stem] + [f"stages.{s}.{b}" for s in range(3) for b in range(n)]


def pairs(k: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


# --- the variants ---------------------------------------------------------------------------------
def run_floor(models, images, batches, batch_size):
    with torch.no_grad():
        for idx in batches:
            x = images[idx].to(torch.float32).div_(255.0)
            for m in models:
                m(x)
    return {}


def run_floor_fast(models, images, batches, batch_size):
    """The fastest exact forward of the models alone (issue #24's yardstick for CKA's cost): channels-last,
    conv + BatchNorm (+ ReLU) folded as ``compare`` folds them, inference mode, full float32, no taps, no hooks,
    no Grams."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(exact_float32())
        stack.enter_context(memory_format(models, torch.channels_last))
        for m in models:
            stack.enter_context(fused_inference(m))
        with torch.inference_mode():
            for idx in batches:
                x = images[idx].to(torch.float32).div_(255.0).contiguous(memory_format=torch.channels_last)
                for m in models:
                    m(x)
    return {}


def run_hubcompare(models, images, batches, batch_size, previous: bool = False):
    """One compare() call; ``previous``: with the forward it had before (NCHW, no fusion, BLAS Gram products)."""
    ds = ImageDataset("synthetic-cifar", "test", images, torch.zeros(len(images), dtype=torch.int64),
                      [f"c{i}" for i in range(10)], [f"syn-{i}" for i in range(len(images))])
    cms = [CompareModel(f"model{i}", m, layers=hub_layers(m)) for i, m in enumerate(models)]
    if previous:
        cka_module._ONEDNN[:] = [False]  # this process only (each variant runs in its own)
    forward = {"memory_format": "contiguous", "fuse_batchnorm": False} if previous else {}
    comp = compare(cms, ds, batch_size=batch_size, seed=SEED, **forward)
    return {p: comp.pair(*p).value for p in pairs(len(models))}


def tool_pair(tool: str, m1: nn.Module, m2: nn.Module, loader: DataLoader) -> np.ndarray:
    if tool == "pytorch-cka":
        from cka import compute_cka
        out = compute_cka(m1, m2, loader, layers=block_modules(m1), model2_layers=block_modules(m2),
                          device="cpu", progress=False)[0]
    elif tool == "cka-pytorch":  # hooks skip nn.Sequential containers: the stem's output is stem.act's
        from cka_pytorch import CKACalculator
        calc = CKACalculator(m1, m2, model1_layers=block_modules(m1, "stem.act"),
                             model2_layers=block_modules(m2, "stem.act"), device=torch.device("cpu"), verbose=False)
        out = calc.calculate_cka_matrix(loader, num_epochs=1)
    else:  # torch-cka has no no_grad of its own: we give it one (without, it keeps autograd graphs)
        from torch_cka import CKA
        c = CKA(m1, m2, model1_name="model_a", model2_name="model_b",
                model1_layers=block_modules(m1), model2_layers=block_modules(m2), device="cpu")
        with torch.no_grad():
            c.compare(loader, loader)
        out = c.export()["CKA"]
    for m in (m1, m2):  # torch-cka and cka-pytorch leave their hooks behind
        for mod in m.modules():
            mod._forward_hooks.clear()
    return out.detach().cpu().double().numpy()


def peak_rss_kb() -> int:
    """The process's peak RSS in kB: VmHWM, which clear_refs resets. (``ru_maxrss`` cannot be used: a
    child inherits its parent's peak at fork and keeps it across exec, so it reads the parent's peak
    whenever that is higher.) Outside Linux: ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def start_memory_run() -> int:
    """Baseline (kB) for the memory run's peak-RSS growth: freed heap memory is handed back (malloc_trim) and
    the kernel's peak mark reset to the current RSS (/proc/self/clear_refs), so nothing before this point
    (imports, setup, warm-up) counts. Where a step is unavailable: the peak so far."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except (OSError, AttributeError):
        pass
    return peak_rss_kb()


def child(args) -> None:
    """One variant in this (fresh) process, after a one-batch warm-up: ``--repeats`` timed runs, or with
    ``--out`` one run for peak memory whose CKA values go to that file. Prints a JSON line."""
    torch.set_num_threads(args.threads)
    if args.variant in TOOLS:
        sys.path.insert(0, str(TOOLS_DIR))
        __import__({"pytorch-cka": "cka", "cka-pytorch": "cka_pytorch", "torch-cka": "torch_cka"}[args.variant])
    images = make_images(args.examples, args.size)
    batches = batch_plan(args.examples, args.batch_size)
    models = [make_model(k, images) for k in args.models.split(",")]

    def run(imgs, plan, batch_size):
        if args.variant == "floor":
            return run_floor(models, imgs, plan, batch_size)
        if args.variant == "floor-fast":
            return run_floor_fast(models, imgs, plan, batch_size)
        if args.variant in ("hubcompare", "hubcompare-nchw"):
            return run_hubcompare(models, imgs, plan, batch_size, previous=args.variant == "hubcompare-nchw")
        loader = DataLoader(Batches(imgs), batch_size=None, sampler=plan)
        return {(i, j): tool_pair(args.variant, models[i], models[j], loader) for i, j in pairs(len(models))}

    # warm-up, so that one-time lazy initialisation is not counted: a full batch of the bare forwards before
    # timing; before memory, the variant itself on 8 inputs (its library buffers, e.g. BLAS packing space for
    # the Gram products, ~1-3 MB, are allocated once per process, not per batch), far below a minibatch's memory
    if args.out:
        run(images[:8], [torch.arange(8)], 8)
    else:
        run_floor(models, images, batches[:1], args.batch_size)
    base = start_memory_run()
    times, cpu = [], []
    for _ in range(1 if args.out else args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = run(images, batches, args.batch_size)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    out = {"times": times, "cpu": cpu}
    if args.out:
        out["peak_kb"] = peak_rss_kb() - base
        np.savez(args.out, **{f"{i}-{j}": v for (i, j), v in result.items()})
    print(json.dumps(out))


# --- the float64 reference ------------------------------------------------------------------------
def hsic_all(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Recipe HSIC_1 for every (row of k, row of l): Grams (L, n, n) float64 with zeroed diagonals."""
    n = k.shape[-1]
    trace = k.reshape(len(k), -1) @ l.reshape(len(l), -1).T  # tr(K~ L~), both symmetric
    middle = torch.outer(k.sum((1, 2)), l.sum((1, 2))) / ((n - 1) * (n - 2))
    right = 2.0 / (n - 2) * (k.sum(2) @ l.sum(2).T)  # 1' K~ L~ 1
    return (trace + middle - right) / (n * (n - 3))


def activations(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The compared layers' float32 activations on ``x`` (NCHW, unfused): native taps, or module hooks."""
    if hasattr(model, "forward_taps"):
        return list(model.forward_taps(x, ["stem"] + [t for t in model.tap_names if t.endswith(".out")]).values())
    got, modules = [], dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda mod, inp, out: got.append(out)) for n in hook_names(model)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return got


def reference(keys: list[str], n: int, batch_size: int, threads: int, size: int = 32) -> dict:
    """Minibatch CKA of every model pair: same float32 activations, float64 Grams and HSIC sums."""
    torch.set_num_threads(threads)
    images = make_images(n, size)
    models = [make_model(k, images) for k in keys]
    sums = {}
    with torch.no_grad():
        for idx in batch_plan(n, batch_size):
            x = images[idx].to(torch.float32).div_(255.0)
            grams = []
            for m in models:
                feats = [a.reshape(len(idx), -1).double() for a in activations(m, x)]
                g = torch.stack([f @ f.T for f in feats])
                g.diagonal(dim1=1, dim2=2).zero_()
                grams.append(g)
            for i in range(len(keys)):
                for j in range(i, len(keys)):
                    h = hsic_all(grams[i], grams[j])
                    sums[i, j] = sums[i, j] + h if (i, j) in sums else h
    out = {}
    for i, j in pairs(len(keys)):
        out[i, j] = (sums[i, j] / torch.sqrt(torch.outer(sums[i, i].diag(), sums[j, j].diag()))).numpy()
    return out


# --- the parent: run everything, print the table --------------------------------------------------
def ensure_tools() -> None:
    sys.path.insert(0, str(TOOLS_DIR))
    if all((TOOLS_DIR / p).is_dir() for p in ("cka", "cka_pytorch", "torch_cka", "seaborn", "lightning")):
        return
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(TOOLS_DIR), "--no-deps", *TOOL_PACKAGES]
    print("installing the tools into the benchmark's own folder:\n  " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        print("  pip failed (tools that cannot import will be reported):", done.stderr.strip()[-500:])


def _child(variant: str, keys: list[str], n: int, args, extra: list[str], env=None, size: int = 32) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--models", ",".join(keys), "--examples", str(n),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--size", str(size), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_group(variants: list[str], keys: list[str], n: int, args, repeats: int, size: int = 32) -> list[dict]:
    """Timed runs round-robin over the variants (repeat 1: every variant, repeat 2: every variant, ...),
    each in a fresh process with the normal allocator, so a slow drift of the machine's speed hits every
    variant alike; then per variant one run for memory and the CKA values, where glibc has a fixed mmap
    threshold: with its default dynamic threshold the same run's peak RSS varies by tens of MB, with a
    fixed one every large tensor is mapped and unmapped, which makes the peak reproducible but slows the
    run (so it is not a timed one)."""
    print(f"  {'+'.join(keys)}, {n} inputs: {repeats} timed round(s) over {', '.join(variants)}, then 1 memory run each")
    res = {v: {"variant": v, "times": [], "cpu": []} for v in variants}
    for r in range(repeats):
        for v in variants:
            if "error" in res[v]:
                continue
            try:
                got = _child(v, keys, n, args, ["--repeats", "1"], size=size)
                res[v]["times"] += got["times"]
                res[v]["cpu"] += got["cpu"]
            except RuntimeError as e:
                res[v]["error"] = str(e)
        print("    round", r + 1, " ".join(f"{v} {res[v]['times'][-1]:.2f} (cpu {res[v]['cpu'][-1]:.2f})" for v in variants
                                        if "error" not in res[v]),
              flush=True)
    memory_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(256 * 1024)}
    for v in variants:
        if "error" in res[v]:
            print(f"    {v} FAILED: {res[v]['error']}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "cka.npz"
            try:
                got = _child(v, keys, n, args, ["--repeats", "0", "--out", str(out)], memory_env, size)
            except RuntimeError as e:
                res[v]["error"] = str(e)
                continue
            if not res[v]["times"]:
                res[v]["times"], res[v]["cpu"] = got["times"], got["cpu"]  # no timed rounds: the memory run's time
            res[v]["peak_kb"] = got["peak_kb"]
            with np.load(out) as z:
                res[v]["cka"] = {tuple(map(int, k.split("-"))): z[k] for k in z.files}
        res[v]["median"] = statistics.median(res[v]["times"])
        res[v]["cpu_median"] = statistics.median(res[v]["cpu"])
    return list(res.values())


def max_err(res: dict, ref: dict | None):
    if ref is None or "cka" not in res or not res["cka"]:
        return None
    return max(float(np.nanmax(np.abs(v - ref[p]))) for p, v in res["cka"].items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--big-examples", type=int, default=512, help="inputs for the width-8 ResNet-56 memory run")
    ap.add_argument("--big-width", type=int, default=8)
    ap.add_argument("--timm-model", default="resnet18", help="the timm architecture of the hook-path pair")
    ap.add_argument("--timm-size", type=int, default=64, help="its input size (square)")
    ap.add_argument("--skip-tools", action="store_true")
    ap.add_argument("--skip-big", action="store_true", help="leave out the width-8 ResNet-56 memory run")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    ap.add_argument("--main-only", action="store_true", help="only the R20 1x vs 2x group")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--models", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=32, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return child(args)
    if args.quick:
        args.examples, args.batch_size, args.repeats, args.big_examples, args.big_width = 128, 32, 1, 64, 2
    n, b = args.examples, args.batch_size
    torch.set_num_threads(args.threads)
    pair, trio = ["r20w1s0", "r20w2s1"], ["r20w1s0", "r20w2s1", "r20w1s2"]
    r56, big = ["r56w1s3", "r56w1s4"], [f"r56w{args.big_width}s5", f"r56w{args.big_width}s6"]
    timm_pair = [f"timm-{args.timm_model}-s7", f"timm-{args.timm_model}-s8"]
    print(f"cka_speed: torch {torch.__version__}, {args.threads} threads, {n} CIFAR-shaped inputs, batch {b}, "
          f"median of {args.repeats}{' (--quick)' if args.quick else ''}")
    if n % b:
        print(f"note: {n} is not a multiple of {b}: the last batch is short; hubcompare weights batches by size, "
              "the tools and the reference weight them equally, so hubcompare's error includes that difference")
    if not args.skip_tools:
        ensure_tools()
    rows = []  # (group, result, reference or None, floor result)
    hubs = ["floor", "floor-fast", "hubcompare", "hubcompare-nchw"]

    def group(name, keys, variants, ex, repeats, ref, size=32):
        res = run_group(variants, keys, ex, args, repeats, size)
        rows.extend((name, r, ref, res[0]) for r in res)
        return {r["variant"]: r for r in res}

    print("float64 reference ...", flush=True)
    ref2 = {(0, 1): reference(pair, n, b, args.threads)[0, 1]}
    tools = [] if args.skip_tools else list(TOOLS)
    main_res = group("R20 1x vs 2x", pair, [*hubs, *tools], n, args.repeats, ref2)
    ok_tools = [t for t in tools if "median" in main_res[t]]
    fastest = min(ok_tools, key=lambda t: main_res[t]["median"]) if ok_tools else None
    trio_res = r56_res = timm_res = big_res = {}
    ref3 = ref56 = ref_timm = None
    timm_name = f"timm {args.timm_model}"
    if not args.main_only:
        ref3 = reference(trio, n, b, args.threads)
        trio_res = group("3 models", trio, hubs + ([fastest] if fastest else []), n, args.repeats, ref3)
        ref56 = reference(r56, n, b, args.threads)
        r56_res = group("R56 1x pair", r56, hubs, n, args.repeats, ref56)
        ref_timm = reference(timm_pair, n, b, args.threads, args.timm_size)
        timm_res = group(timm_name, timm_pair, hubs, n, args.repeats, ref_timm, args.timm_size)
        big_res = {} if args.skip_big else group(f"R56 {args.big_width}x pair", big, ["floor", "hubcompare"],
                                                 args.big_examples, 0, None)
    print_table(rows, args, tools)

    print("\ngoals")

    def goal(text, figure, ok):
        print(f"  {'PASS' if ok else 'MISS' if ok is not None else '  — '}  {text:<58} {figure}")

    for name, res, ref in (("R20 1x vs 2x", main_res, ref2), ("3 models", trio_res, ref3), ("R56 1x pair", r56_res, ref56),
                           (timm_name, timm_res, ref_timm)):
        if not res:
            continue
        hub, floor = res["hubcompare"], res["floor"]
        if "median" in hub and "median" in floor:
            e, wall, cpu = max_err(hub, ref), hub["median"] / floor["median"], hub["cpu_median"] / floor["cpu_median"]
            goal(f"{name}: <= 1.0x floor (cpu time), err <= 1e-6", f"{cpu:.2f}x cpu, {wall:.2f}x wall, err {e:.1e}",
                 cpu <= 1.0 and e <= 1e-6)
        fast = res.get("floor-fast", {})
        if "median" in hub and "median" in fast:
            wall, cpu = hub["median"] / fast["median"], hub["cpu_median"] / fast["cpu_median"]
            goal(f"{name}: <= 1.3x floor-fast (cpu time)", f"{cpu:.2f}x cpu, {wall:.2f}x wall", cpu <= 1.3)
    hub, floor = main_res["hubcompare"], main_res["floor"]
    if "median" in hub and "median" in floor:
        grams_mb = (10 + 10) * b * b * 8 / 2**20  # La + Lb = 10 + 10 layers, float64
        if fastest:
            t = main_res[fastest]["median"]
            goal(f"no slower than the fastest tool ({fastest})", f"{hub['median']:.2f} s vs {t:.2f} s", hub["median"] <= t)
        goal("peak memory <= floor + Grams (La+Lb) b^2 8 B", f"{hub['peak_kb'] / 1024:.1f} MB vs "
             f"{floor['peak_kb'] / 1024:.1f} + {grams_mb:.1f} MB", hub["peak_kb"] / 1024 <= floor["peak_kb"] / 1024 + grams_mb)
    h3 = trio_res.get("hubcompare", {})
    if fastest and "median" in h3 and "median" in trio_res.get(fastest, {}):
        s = trio_res[fastest]["median"] / h3["median"]
        goal(f"3 models: {fastest} x3 pairs / hubcompare >= 1.8x", f"{s:.2f}x", s >= 1.8)
    hb, fb = big_res.get("hubcompare", {}), big_res.get("floor", {})
    if "peak_kb" in hb and "peak_kb" in fb:
        g = (28 + 28) * min(b, args.big_examples) ** 2 * 8 / 2**20
        goal(f"R56 {args.big_width}x peak memory <= floor + Grams", f"{hb['peak_kb'] / 1024:.1f} MB vs "
             f"{fb['peak_kb'] / 1024:.1f} + {g:.1f} MB", hb["peak_kb"] / 1024 <= fb["peak_kb"] / 1024 + g)


def print_table(rows, args, tools) -> None:
    print(f"\n{'group':<15} {'variant':<16} {'median s':>9} {'x floor':>8} {'cpu s':>7} {'x floor':>8} {'peak MB':>8} "
          f"{'max|err|':>9}  runs / note")
    for name, r, ref, floor in rows:
        if "error" in r:
            print(f"{name:<15} {r['variant']:<16} {'—':>9} {'—':>8} {'—':>7} {'—':>8} {'—':>8} {'—':>9}  could not run: "
                  f"{r['error'][:90]}")
            continue
        err = max_err(r, ref)
        ratio = f"{r['median'] / floor['median']:.2f}" if floor.get("median") else "—"
        cpu_ratio = f"{r['cpu_median'] / floor['cpu_median']:.2f}" if floor.get("cpu_median") else "—"
        runs = " ".join(f"{t:.2f}" for t in r["times"])
        if name == "3 models" and r["variant"] in TOOLS:
            runs += "  (one call per pair, 3 pairs)"
        print(f"{name:<15} {r['variant']:<16} {r['median']:9.2f} {ratio:>8} {r['cpu_median']:7.2f} {cpu_ratio:>8} "
              f"{r['peak_kb'] / 1024:8.1f} {'—' if err is None else f'{err:.1e}':>9}  {runs}")
    print("x floor: wall-clock median (then CPU-time median) over the floor's, the bare NCHW float32 forwards of the "
          "group's models.")
    print("hubcompare-nchw: compare() with the forward it had before (NCHW, BatchNorm not fused, BLAS Gram products).")
    print("peak MB: growth of peak RSS during one run in its own process, over the RSS just before it (after imports, "
          "model/data creation and a small warm-up forward; fixed glibc mmap threshold, heap trimmed, peak mark reset).")
    print("max|err|: largest |CKA - float64 reference| over all layer pairs; every variant sees the reference's own "
          "minibatches (same seeded order and boundaries), so this is against a reference with its batching.")
    for t in tools:
        print(f"{t}: {TOOL_NOTES[t]}.")
    if args.main_only:
        return
    print(f"timm {args.timm_model}: random weights, {args.timm_size}x{args.timm_size} inputs, layers act1 + every block "
          "(module hooks).")
    if args.big_examples != args.examples and not args.skip_big:
        print(f"R56 {args.big_width}x pair: {args.big_examples} inputs, its memory run only (time = that run), no error column.")


if __name__ == "__main__":
    main()
