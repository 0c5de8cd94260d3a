"""What the other similarity measures cost in hubcompare's one streaming pass, beside linear CKA alone and beside the
reference tools on the same activations (issue #24).

The case: a ResNet-20 (1x) against a ResNet-20 (2x), stem + every block output (10 layers each, the all-pairs
matrix over both models' 20 layers), 2,048 CIFAR-shaped synthetic images, batch 256 (8 minibatches), randomly
initialised models with BatchNorm statistics set from 8 images (``cka_speed.make_model``), torch threads as given.

Variants, each in a fresh subprocess, round-robin over ``--repeats`` rounds (the figure is the median wall and CPU
time, then one more run for the peak-RSS growth):

- ``cka``            ``compare(...)`` as the CLI runs it: linear CKA only;
- ``all``            the Gram-derived measures together: cka, rbf-cka, rsa, mknn, procrustes (goal: <= 1.5x ``cka``);
- ``every``          every measure there is (``all`` + svcca, pwcca, linreg);
- ``+NAME``          cka plus one measure (what that measure adds);
- ``rsatoolbox``     RSA with rsatoolbox (correlation RDMs, Spearman) on the same minibatches' activations: each
                     layer's RDM once per minibatch, then the cross-model layer pairs (10 x 10) compared (the
                     activations are captured in the same forward; their capture is in the time);
- ``scipy-procrustes``  ``scipy.linalg.orthogonal_procrustes`` (its scale = the nuclear norm) on centred,
                     unit-norm features, the same 10 x 10 pairs per minibatch, except the pairs whose (p_a, p_b)
                     matrix A^T B exceeds 64 MiB (every conv stage: 16,384 x 32,768 features is 4 GiB per pair, and its SVD minutes),
                     which it cannot do here; the table says how many it skipped.

hubcompare computes what ``hubcompare compare`` reports (``--pairs across``, the default): the 100 cross-model layer
pairs and each layer with itself (the costly measures skip the 90 within-model pairs; the cheap ones compute every
pair in one product anyway); ``--pairs all`` adds the within-model pairs (210 in all), as grounding needs them. The
tools do the 100 cross pairs. Run from the repository root:

    .venv/bin/python benchmarks/measures_speed.py               # full size (minutes on 2 cores)
    .venv/bin/python benchmarks/measures_speed.py --quick       # smoke run
    .venv/bin/python benchmarks/measures_speed.py --variants all,+pwcca --repeats 1   # some variants (and cka)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from cka_speed import batch_plan, hub_layers, make_images, make_model  # the cka benchmark's models and plan

from hubcompare.data.datasets import ImageDataset
from hubcompare.similarity.engine import CompareModel, compare
from hubcompare.similarity.measures import measure_names, parse_measures

MODELS = ("r20w1s0", "r20w2s1")
GRAM_MEASURES = ("cka", "rbf-cka", "rsa", "mknn", "procrustes")  # the goal: these together <= 1.5x cka alone
PROCRUSTES_BYTES = 1 << 26  # scipy's solver forms the (p_a, p_b) float64 matrix A^T B: pairs above this are skipped


def dataset(n: int) -> ImageDataset:
    images = make_images(n)
    return ImageDataset("synthetic", "test", images, torch.zeros(n, dtype=torch.int64), [str(c) for c in range(10)],
                        [f"x{i}" for i in range(n)])


def run_hubcompare(names: list[str], n: int, batch: int, pairs: str = "across") -> dict:
    ds = dataset(n)
    models = [make_model(k, ds.images) for k in MODELS]
    compare([CompareModel(k, m, layers=hub_layers(m)) for k, m in zip(MODELS, models)], ds, batch_size=batch,
            num_examples=batch)  # warm-up: one minibatch
    t0, c0 = time.perf_counter(), time.process_time()
    comp = compare([CompareModel(k, m, layers=hub_layers(m)) for k, m in zip(MODELS, models)], ds, batch_size=batch,
                   measures=parse_measures(names), measure_pairs=pairs)
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "layers": int(comp.offsets[-1]),
            "measures": list(comp.measures)}


def _activations(models, x):
    out = []
    for m in models:
        acts = m.forward_taps(x, ["stem", *[f"stage{s}.block{b}.out" for s in (1, 2, 3) for b in (1, 2, 3)]])
        out.append([a.reshape(len(x), -1).double().numpy() for a in acts.values()])
    return out


def run_tool(tool: str, n: int, batch: int) -> dict:
    import rsatoolbox
    from scipy.linalg import orthogonal_procrustes

    ds = dataset(n)
    models = [make_model(k, ds.images) for k in MODELS]
    t0, c0 = time.perf_counter(), time.process_time()
    skipped = 0
    for idx in batch_plan(n, batch):
        with torch.no_grad():
            xa, xb = _activations(models, ds.images[idx].float() / 255)
        if tool == "rsatoolbox":  # each layer's RDM once per minibatch, then every cross pair
            rdms = [[rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(z), method="correlation") for z in side]
                    for side in (xa, xb)]
            for ra in rdms[0]:
                for rb in rdms[1]:
                    rsatoolbox.rdm.compare(ra, rb, method="spearman")
            continue
        for a in xa:
            for b in xb:
                if a.shape[1] * b.shape[1] * 8 > PROCRUSTES_BYTES:  # A^T B would not fit: the tool cannot do it
                    skipped += 1
                else:
                    ac, bc = a - a.mean(0), b - b.mean(0)
                    ac, bc = ac / np.linalg.norm(ac), bc / np.linalg.norm(bc)
                    if ac.shape[1] != bc.shape[1]:  # scipy's solver needs equal widths: pad the narrower with zeros
                        w = max(ac.shape[1], bc.shape[1])
                        ac, bc = (np.pad(z, ((0, 0), (0, w - z.shape[1]))) for z in (ac, bc))
                    orthogonal_procrustes(ac, bc)
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "pairs_skipped": skipped}


def child(args) -> None:
    torch.set_num_threads(args.threads)
    if args.variant in ("rsatoolbox", "scipy-procrustes"):
        got = run_tool(args.variant, args.examples, args.batch)
    else:
        names = {"all": list(GRAM_MEASURES), "every": measure_names()}.get(args.variant)
        names = names or ["cka"] + ([args.variant[1:]] if args.variant != "cka" else [])
        got = run_hubcompare(names, args.examples, args.batch, args.pairs)
    got["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(got))


def spawn(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--examples", str(args.examples), "--batch", str(args.batch),
           "--threads", str(args.threads), "--pairs", args.pairs]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="256 examples, batch 64, one round")
    ap.add_argument("--skip-tools", action="store_true")
    ap.add_argument("--pairs", choices=("across", "all"), default="across",
                    help="the layer pairs the other measures compute: across the two models (what `hubcompare compare` "
                         "reports, the default) or all, within each model too (what grounding needs)")
    ap.add_argument("--variants", help="comma-separated variants to run (default: all of them), e.g. cka,all,+pwcca")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        child(args)
        return
    if args.quick:
        args.examples, args.batch, args.repeats = 256, 64, 1
    variants = ["cka", "all", "every", *[f"+{m}" for m in measure_names() if m != "cka"]]
    if not args.skip_tools:
        variants += ["rsatoolbox", "scipy-procrustes"]
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = sorted(set(wanted) - set(variants))
        if unknown:
            ap.error(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(variants)}")
        variants = list(dict.fromkeys(["cka", *wanted]))  # cka is every ratio's base
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            runs[v].append(spawn(v, args))
            print(f"  {v}: {runs[v][-1]}", file=sys.stderr, flush=True)  # as it goes: a long run's figures survive
    print(f"ResNet-20 1x vs 2x, {args.examples} CIFAR-shaped inputs, batch {args.batch}, {args.threads} threads, "
          f"median of {args.repeats}, measure pairs: {args.pairs}; x cka = time / linear CKA alone's (wall and CPU)")
    base = statistics.median(r["wall"] for r in runs["cka"]), statistics.median(r["cpu"] for r in runs["cka"])
    print(f"{'variant':<18} {'wall s':>8} {'cpu s':>8} {'x cka':>7} {'x cka cpu':>9} {'peak RSS MB':>11}")
    for v, rs in runs.items():
        wall, cpu = statistics.median(r["wall"] for r in rs), statistics.median(r["cpu"] for r in rs)
        skipped = rs[0].get("pairs_skipped")
        print(f"{v:<18} {wall:8.2f} {cpu:8.2f} {wall / base[0]:7.2f} {cpu / base[1]:9.2f} "
              f"{max(r['peak_rss_mb'] for r in rs):11.0f}" + (f"  ({skipped} layer pairs x minibatches skipped: "
                                                              "A^T B too large)" if skipped else ""))
    if "all" not in runs:
        return
    ratio = statistics.median(r["wall"] for r in runs["all"]) / base[0]
    print(f"cka, rbf-cka, rsa, mknn and procrustes in one pass: {ratio:.2f}x linear CKA alone (goal <= 1.5x): "
          f"{'PASS' if ratio <= 1.5 else 'MISS'}")


if __name__ == "__main__":
    main()
