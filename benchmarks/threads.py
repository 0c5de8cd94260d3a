"""Torch CPU threads: seconds per training step by thread count, on an idle and on a busy machine.

Workloads: ``digits`` (the digits recipe's ResNet-14, 8x8x1, batch 64: forward + loss + backward + SGD step),
``cifar`` (ResNet-20 1x, 32x32x3, batch 128, the same step), ``cka`` (a digits ResNet-14 forward of 500 images
and the centred Gram matrices of its 14 tapped layers, as a CKA pass computes them).
Conditions: ``idle`` (nothing added by this script: whatever else runs on the machine, stated in the header),
``busy`` (one spinning process per other core at normal priority, started before and killed after each
measurement), ``niced`` (the same spinners at nice 19).
Thread counts: 1, 2, ..., the usable cores, and ``default`` (hubcompare's rule, hubcompare.models.threads,
chosen in the measured process under the condition, as `hubcompare train` does). The verdict compares the row of
the count the default chose with the best row (the default's own row is that count timed again: the spread between
the two is the measurement's noise). ``--passive`` adds rows with
OMP_WAIT_POLICY=PASSIVE. Each cell is a fresh subprocess that warms up, then times steps until ``--steps`` or
``--seconds`` (whichever first), so a slow cell stays bounded; it reports seconds per step and CPU seconds per
step (CPU >> wall x threads' share means threads spinning at OpenMP barriers).

    .venv/bin/python benchmarks/threads.py                        # all workloads, idle + busy
    .venv/bin/python benchmarks/threads.py --workloads digits --conditions busy --passive
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"digits": 60, "cifar": 6, "cka": 6}
WITHIN = 1.5


def _child(workload: str, threads: str) -> None:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    import hubcompare  # noqa: F401  (registers cifar_resnet)
    from hubcompare.models.threads import choose_threads, forward_macs
    from hubcompare.training.loop import build_model
    from hubcompare.training.recipes import load_recipe

    shape, batch, depth = {"digits": ((1, 8, 8), 64, 14), "cifar": ((3, 32, 32), 128, 20), "cka": ((1, 8, 8), 500, 14)}[workload]
    recipe = load_recipe("digits" if shape[0] == 1 else "cifar10", {"model.depth": depth, "model.width": 1})
    data = SimpleNamespace(image_shape=shape, num_classes=10, classes=[str(i) for i in range(10)], name=workload)
    torch.manual_seed(0)
    model = build_model(recipe, data)
    reason = "as asked"
    if threads == "default":
        choice = choose_threads(None if workload == "cka" else forward_macs(model, shape) * batch)
        n, reason = choice.threads, choice.reason
    else:
        n = int(threads)
    torch.set_num_threads(n)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand((batch, *shape)).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    if workload == "cka":
        from hubcompare.similarity.cka import gram

        model.eval()
        feats = []
        hooks = [m.register_forward_hook(lambda m, i, o: feats.append(o)) for m in model.modules()
                 if isinstance(m, torch.nn.Conv2d)][:14]

        def step():
            feats.clear()
            with torch.no_grad():
                model(x)
                for f in feats:
                    gram(f.reshape(len(f), -1).float())
    else:
        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    step()  # warm-up: oneDNN's kernels are created on first use
    budget, limit = float(os.environ["BENCH_SECONDS"]), int(os.environ["BENCH_STEPS"])
    r0, t0, done = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
    while done < limit and (done == 0 or time.perf_counter() - t0 < budget):
        step()
        done += 1
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({"threads": n, "reason": reason, "s_per_step": wall / done, "cpu_per_step": cpu / done, "steps": done}))


def _spinners(condition: str, count: int) -> list[subprocess.Popen]:
    if condition == "idle":
        return []
    pre = (lambda: os.nice(19)) if condition == "niced" else None
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pre) for _ in range(count)]


def measure(workload: str, threads: str, condition: str, cores: int, passive: bool, seconds: float) -> dict:
    env = dict(os.environ, BENCH_SECONDS=str(seconds), BENCH_STEPS=str(STEPS[workload]))
    env.pop("OMP_NUM_THREADS", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    spin = _spinners(condition, cores - 1)
    try:
        time.sleep(0.3 if spin else 0)  # the spinners are running before the child samples the load
        out = subprocess.run([sys.executable, __file__, "--child", workload, threads], env=env, capture_output=True,
                             text=True, timeout=seconds * 3 + 120)
    finally:
        for p in spin:
            p.kill()
            p.wait()
    if out.returncode:
        raise SystemExit(f"{workload} {threads} {condition}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--workloads", nargs="+", default=["digits", "cifar", "cka"], choices=sorted(STEPS))
    ap.add_argument("--conditions", nargs="+", default=["idle", "busy"], choices=["idle", "busy", "niced"])
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per cell at most (after the warm-up)")
    ap.add_argument("--passive", action="store_true", help="also measure each count with OMP_WAIT_POLICY=PASSIVE")
    args = ap.parse_args()
    if args.child:
        return _child(*args.child)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"{cores} usable cores; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at start; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    counts = [str(n) for n in range(1, cores + 1)]
    variants = [(c, False) for c in counts] + ([(c, True) for c in counts if c != "1"] if args.passive else [])
    print(f"{'workload':<8} {'condition':<9} {'threads':<16} {'s/step':>8} {'cpu s/step':>10} {'x best':>7}  default")
    for workload in args.workloads:
        for condition in args.conditions:
            rows = [(f"{c}{' passive' if p else ''}", measure(workload, c, condition, cores, p, args.seconds))
                    for c, p in variants]
            best = min(r["s_per_step"] for _, r in rows if "passive" not in _)
            d = measure(workload, "default", condition, cores, False, args.seconds)
            rows.append((f"default={d['threads']}", d))
            # judged by the chosen count's own row: the default's run is the same configuration measured again, and
            # on a loaded machine two runs of one configuration can differ by more than 1.5x (shown in its row)
            chosen = dict(rows)[str(d["threads"])]["s_per_step"] / best
            for label, r in rows:
                ratio = r["s_per_step"] / best
                verdict = (f"{'ok' if chosen <= WITHIN else 'NOT'} within {WITHIN}x: {d['threads']} = {chosen:.2f}x best "
                           f"({r['reason']})" if label.startswith("default") else "")
                print(f"{workload:<8} {condition:<9} {label:<16} {r['s_per_step']:>8.4f} {r['cpu_per_step']:>10.4f} "
                      f"{ratio:>7.2f}  {verdict}", flush=True)
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
