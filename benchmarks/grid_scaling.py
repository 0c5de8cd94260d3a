"""Grid scaling: the same 8 digits runs trained sequentially, on the local worker pool, and on Ray.

- sequential: ``hubcompare.training.loop.train`` in a loop in this process, torch's default threads
  (what ``hubcompare train`` in a shell loop does);
- local: ``run_grid(backend="local")`` with its defaults (worker processes sized to the machine);
- ray: ``run_grid(backend="ray")`` on a local Ray started by this script (its start-up time is shown apart).

For each: wall time, the summed training-loop time of the runs (``wall_time_s`` in each checkpoint), the
speed-up over sequential and the overhead per run: ``(wall x concurrent runs - summed loop time) / runs``,
i.e. the slot time not spent in training loops (worker start-up and imports, data loading, evaluation,
writing checkpoints, scheduling, idle slots at the end). Finally, whether local and Ray weights are
identical bit for bit (they run with the same thread count per run).

    python benchmarks/grid_scaling.py                       # the bundled digits-zoo grid: 8 runs, 6 epochs
    python benchmarks/grid_scaling.py --epochs 3 --no-ray   # quicker
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from hubcompare.training.backends import machine_cpus
from hubcompare.training.grid import run_grid
from hubcompare.training.gridspec import load_grid
from hubcompare.training.loop import train


def spec_for(args, out: Path):
    spec = load_grid(args.grid, out)
    if args.epochs:
        from hubcompare.training.gridspec import parse_grid

        spec = parse_grid({"population": spec.population, "recipe": spec.recipe, "axes": spec.axes,
                           "overrides": {**spec.overrides, "train.epochs": args.epochs, "train.warmup_epochs": 1}},
                          spec.source, out=out)
    return spec


def report(name: str, wall: float, runs, slots: int, threads: int, base: float | None) -> None:
    loop = sum(r.wall_time_s or 0.0 for r in runs)
    overhead = (wall * slots - loop) / len(runs)
    speed = f"{base / wall:5.2f}x" if base else "   1x"
    print(f"{name:<22} {slots:>2} x {threads} thr  {wall:8.1f} s  {loop:8.1f} s  {speed}  {overhead:7.2f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="digits-zoo", help="grid file or bundled grid name (default digits-zoo: 8 runs)")
    p.add_argument("--epochs", type=int, default=None, help="override the grid's epochs")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray backend")
    p.add_argument("--keep", type=Path, default=None, help="write the populations here (default: a temporary folder)")
    args = p.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="grid-scaling-"))
    cores = machine_cpus()

    spec = spec_for(args, root / "sequential")
    n = len(spec.points)
    print(f"{n} runs of {spec.recipe} ({', '.join(f'{k} x{len(v)}' for k, v in spec.axes.items())}), "
          f"{spec.points[0].recipe['train']['epochs']} epochs; {cores} CPUs; torch {torch.__version__}")
    print(f"{'backend':<22} {'slots':>10}  {'wall':>10}  {'sum loops':>10}  {'speed':>6}  {'overhead/run':>12}")

    started = time.perf_counter()
    records = []
    for point in spec.points:
        records.append(train(point.recipe, spec.out / point.name).meta)
    seq_wall = time.perf_counter() - started
    report("sequential", seq_wall, records, 1, torch.get_num_threads(), None)

    local = spec_for(args, root / "local")
    started = time.perf_counter()
    result = run_grid(local, backend="local")
    wall = time.perf_counter() - started
    workers = min(n, cores)
    report("local pool", wall, result.runs, workers, max(1, cores // workers), seq_wall)
    assert not result.failed, [r.errors for r in result.failed]

    if not args.no_ray:
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        ray_start = time.perf_counter() - started
        ray_spec = spec_for(args, root / "ray")
        started = time.perf_counter()
        ray_result = run_grid(ray_spec, backend="ray")
        wall = time.perf_counter() - started
        report("ray (after ray.init)", wall, ray_result.runs, workers, max(1, cores // workers), seq_wall)
        report("ray (with ray.init)", wall + ray_start, ray_result.runs, workers, max(1, cores // workers), seq_wall)
        started = time.perf_counter()
        ray.shutdown()
        print(f"ray.init {ray_start:.1f} s, ray.shutdown {time.perf_counter() - started:.1f} s")
        same = sum((local.out / p.name / "model.safetensors").read_bytes() == (ray_spec.out / p.name / "model.safetensors").read_bytes()
                   for p in local.points)
        print(f"local vs ray weights identical bit for bit: {same}/{n}")
    print(f"populations in {root}" if args.keep else "")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
