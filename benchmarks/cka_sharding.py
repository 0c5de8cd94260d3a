"""Sharded vs single-process CKA: a cross-cka of two digits ResNets in this process and over Ray workers.

Two digits ResNets are trained briefly (or given with --models), then the same cross-model comparison runs:

- single, N threads: ``compare`` in this process with torch's threads (what ``hubcompare cross-cka`` does);
- single, 1 thread: the same on one thread (the per-worker thread count of the sharded run below);
- ray: ``RayShards.compare`` on a local Ray started here (its start-up is shown apart), ``--workers`` shards of
  one thread each; each worker loads both models once from their folders.

For each: wall time and speed-up over the single process; then the largest difference of the sharded CKA values
and jackknife standard errors from each single-process run (0 means the same bits: the worker threads match).

    python benchmarks/cka_sharding.py                         # ResNet-20 pair, 32 minibatches of 128
    python benchmarks/cka_sharding.py --depth 56 --passes 16  # more work per minibatch, more minibatches
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hubcompare.hub.references import resolve_reference
from hubcompare.similarity.distributed import RayShards
from hubcompare.similarity.engine import CompareModel, compare, comparison_dataset
from hubcompare.training.backends import machine_cpus
from hubcompare.training.loop import train
from hubcompare.training.recipes import load_recipe


def trained_pair(root: Path, depth: int, epochs: int) -> list[str]:
    refs = []
    for seed in (0, 1):
        out = root / f"digits-d{depth}-s{seed}"
        if not (out / "model.safetensors").is_file():
            train(load_recipe("digits", {"model.depth": depth, "train.epochs": epochs, "train.warmup_epochs": 0,
                                         "train.seed": seed}), out)
        refs.append(str(out))
    return refs


def timed(run):
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs=2, default=None, help="two model references (default: train two digits ResNets)")
    p.add_argument("--depth", type=int, default=20, help="depth of the trained ResNets (default 20)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the trained ResNets (CKA's cost does not depend on it)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--passes", type=int, default=8, help="passes over the digits test split (default 8: 32 minibatches)")
    p.add_argument("--workers", type=int, default=None, help="Ray shards (default: one per CPU)")
    p.add_argument("--keep", type=Path, default=None, help="train the models here (default: a temporary folder)")
    args = p.parse_args()
    cores = machine_cpus()
    workers = args.workers or cores
    refs = args.models or trained_pair(args.keep or Path(tempfile.mkdtemp(prefix="cka-sharding-")), args.depth, args.epochs)
    models = [CompareModel.from_resolved(resolve_reference(r), None, ref=r) for r in refs]
    ds = comparison_dataset(models)
    kw = {"batch_size": args.batch_size, "passes": args.passes}
    threads = torch.get_num_threads()

    compare(models, ds, batch_size=args.batch_size, num_examples=2 * args.batch_size)  # warm-up: first-call costs
    many, many_s = timed(lambda: compare(models, ds, **kw))
    torch.set_num_threads(1)
    one, one_s = timed(lambda: compare(models, ds, **kw))
    torch.set_num_threads(threads)
    print(f"cross-cka {' vs '.join(refs)}: {ds.name} {ds.split}, {many.settings['num_batches']} minibatches of "
          f"{args.batch_size}, {sum(len(c.layers) for c in many.captures)} layers; {cores} CPUs; torch {torch.__version__}")
    print(f"{'run':<28} {'wall':>8}  {'speed':>6}")
    print(f"{f'single, {threads} threads':<28} {many_s:7.2f} s   1.00x")
    print(f"{'single, 1 thread':<28} {one_s:7.2f} s  {many_s / one_s:5.2f}x")

    import ray

    _, init_s = timed(lambda: ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,
                                       logging_level=logging.WARNING))
    with RayShards(workers=workers, threads=1) as shards:
        first, first_s = timed(lambda: shards.compare(models, ds, **kw))  # workers start and import torch
        sharded, sharded_s = timed(lambda: shards.compare(models, ds, **kw))  # warm workers
    b = sharded.settings["backend"]
    label = f"ray, {b['shards']} shards x 1 thread"
    print(f"{label + ', cold':<28} {first_s:7.2f} s  {many_s / first_s:5.2f}x   (workers start: models loaded in each)")
    print(f"{label + ', warm':<28} {sharded_s:7.2f} s  {many_s / sharded_s:5.2f}x   (minibatches per shard "
          f"{b['minibatches_per_shard']})")
    print(f"ray.init {init_s:.1f} s (once per session; the CLI pays it when it starts a local Ray)")
    ray.shutdown()

    for name, ref in ((f"single, {threads} threads", many), ("single, 1 thread", one)):
        dv = float(np.nanmax(np.abs(sharded.value - ref.value)))
        ds_ = float(np.nanmax(np.abs(sharded.se - ref.se)))
        same = np.array_equal(sharded.value, ref.value, equal_nan=True) and np.array_equal(sharded.se, ref.se, equal_nan=True)
        print(f"sharded vs {name:<22} max |dCKA| {dv:.1e}, max |dSE| {ds_:.1e}{'  (the same bits)' if same else ''}")
    assert np.array_equal(first.value, sharded.value, equal_nan=True)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
