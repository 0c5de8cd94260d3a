"""Speed of `hubcompare agreement` and `class-diff`'s computation on two large synthetic populations.

Two populations of 100 models x 10,000 examples x 10 classes (synthetic predictions), 1,000
split-half null splits and 1,000 permutations: prints the time of each command's computation
(the statistics, not loading checkpoints or plotting). Goal: under 2 s for both together.

    .venv/bin/python benchmarks/population_stats.py [--models 100 --examples 10000 --splits 1000 --repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hubcompare.populations.agreement import agreement
from hubcompare.populations.classdiff import class_diff
from hubcompare.populations.synthetic import synthetic_labels, synthetic_side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--splits", type=int, default=1000)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
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
          f"null band (null: {s['null']['expected_outside_under_null']:.0f}); class-diff significant classes "
          f"{[cd.classes[k] for k in np.flatnonzero(cd.significant)]} (planted: class3)")


if __name__ == "__main__":
    main()
