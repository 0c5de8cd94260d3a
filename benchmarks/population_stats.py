"""Speed of `hubcompare agreement` and `class-diff`'s computation on two large synthetic populations,
and the calibration of agreement's count of examples outside the null's band (issue #15).

Speed: two populations of 100 models x 10,000 examples x 10 classes (synthetic predictions), 1,000
split-half null splits and 1,000 permutations: prints the time of each command's computation
(the statistics, not loading checkpoints or plotting). Goal: under 2 s for both together.

Calibration: sides drawn from one population (no difference but chance) at 3, 5, 10 and 20 models
a side: the observed count against what was reported before (the halves' own count) and against
what is reported now (the mean over relabellings at the sides' sizes), with the share of draws
whose count has p <= 0.05. Calibrated: ratio ~1 and share ~0.05 or below.

    .venv/bin/python benchmarks/population_stats.py [--models 100 --examples 10000 --splits 1000 --repeats 3]
        [--sizes 3 5 10 20 --draws 20 --calibration-examples 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hubcompare.populations.agreement import agreement
from hubcompare.populations.classdiff import class_diff
from hubcompare.populations.synthetic import synthetic_labels, synthetic_pair, synthetic_side


def calibration(sizes: list[int], draws: int, examples: int, classes: int) -> None:
    """Observed / expected count outside the band on null data, before (halves' count) and after (relabellings)."""
    print(f"\ncalibration on null data: {draws} draws a size, {examples} examples, 200 splits, 200 relabellings; "
          "null from A")
    print(f"{'models a side':>13} {'halves of':>9} {'observed':>9} {'before: halves':>15} {'ratio':>6} "
          f"{'after: relabelled':>18} {'ratio':>6} {'p <= 0.05':>9} {'mean p':>7}")
    for m in sizes:
        obs, before, after, p = [], [], [], []
        for d in range(draws):
            a, b = synthetic_pair(m, m, examples, classes, 1000 * m + d)
            n = agreement(a, b, splits=200, permutations=200, seed=d).null
            obs.append(n["outside"])
            before.append(n["split_half_outside"])
            after.append(n["expected_outside"])
            p.append(n["outside_test"]["p_value"])
        o, bf, af = np.mean(obs), np.mean(before), np.mean(after)
        rb = f"{o / bf:6.2f}" if bf > 0 else f"{'inf':>6}"
        print(f"{m:>13} {m // 2:>9} {o:9.1f} {bf:15.1f} {rb} {af:18.1f} {o / af:6.2f} {np.mean(np.array(p) <= 0.05):9.2f} "
              f"{np.mean(p):7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--splits", type=int, default=1000)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="*", default=[3, 5, 10, 20], help="models a side for the calibration (none: skip)")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--calibration-examples", type=int, default=2000)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    labels, ease = synthetic_labels(args.examples, args.classes, rng)
    a = synthetic_side("A", args.models, labels, ease, rng, args.classes)
    b = synthetic_side("B", args.models, labels, ease, rng, args.classes, class_shift={3: 0.3})
    print(f"{args.models} + {args.models} models x {args.examples} examples x {args.classes} classes, "
          f"{args.splits} null splits, {args.permutations} permutations")
    times = []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        ag = agreement(a, b, splits=args.splits, permutations=args.permutations, seed=rep)
        t1 = time.perf_counter()
        cd = class_diff(a, b, splits=args.splits, seed=rep)
        t2 = time.perf_counter()
        times.append((t1 - t0, t2 - t1))
        print(f"run {rep + 1}: agreement {t1 - t0:.3f} s, class-diff {t2 - t1:.3f} s, total {t2 - t0:.3f} s")
    best = min(times, key=sum)
    print(f"best: agreement {best[0]:.3f} s + class-diff {best[1]:.3f} s = {sum(best):.3f} s "
          f"(first run {sum(times[0]):.3f} s; goal < 2 s)")
    s = ag.summary()
    print(f"check: permutation p = {s['permutation_test']['p_value']:.4f}, {s['null']['outside_band']} examples outside the "
          f"null band (expected {s['null']['expected_outside_under_null']:.0f}, p = {s['null']['outside_band_p_value']:.3f}); class-diff significant classes "
          f"{[cd.classes[k] for k in np.flatnonzero(cd.significant)]} (planted: class3)")
    if args.sizes:
        calibration(args.sizes, args.draws, args.calibration_examples, args.classes)


if __name__ == "__main__":
    main()
