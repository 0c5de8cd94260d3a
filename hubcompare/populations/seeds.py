"""Across seeds: which layers two populations share, inside vs outside each model's block (paper finding 5).

Two sides (each one architecture, several seeds; :mod:`.sides` names them) go through ONE comparison pass
(:class:`~hubcompare.similarity.engine.ComparisonPass`): every model's Grams are made once per minibatch and
one product per batch gives every layer pair of every model pair, the within-model maps included. From it:

- **within a side**: for each seed pair and each layer, the CKA of that layer with the same layer (same
  name) of the other seed;
- **across the sides**: for each A x B pair, the CKA of a layer with the other model's layer at the same
  *relative depth* (layer index / (L - 1) over the compared layers in forward order, the nearest one:
  :func:`~hubcompare.similarity.results.relative_depth_match`), on A's layers and on B's;
- **each model's block** (:func:`~hubcompare.similarity.blocks.detect_blocks`, the calibrated criteria) from
  its within-model CKA of the same pass and its exact PC1 shares on a fixed sample, so every (pair, layer)
  value is classed **outside** (neither model's layer in its block), **partly** (one) or **inside** (both).

Other similarity measures (``measures``) ride the same pass and get the same four pair sets and classes (the blocks
stay CKA's: the paper's criterion), in ``SeedsResult.measures``.

Per layer: mean, sd and number of pairs; per class: the same over (pair, layer) values. The paper's finding
reads: outside > inside within a side and across. A side with one model has no seed pairs: its within-side
values are NaN with n = 0 (and a warning), never invented.

Memory: each minibatch holds the U-centred Grams of all T layers of all models in float64 (T n^2 8 bytes),
and the jackknife keeps each minibatch's T x T matrix (T^2 8 bytes per minibatch); time grows as T^2 n^2 per
minibatch. :func:`pass_bytes` estimates both and a request over ``max_bytes`` is refused before any work.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data.datasets import ImageDataset
from ..errors import ComparisonTooLargeError, OverlappingSidesError, SideArchitectureError
from ..provenance import atomic_write_json, atomic_write_text
from ..similarity.blocks import DEFAULT_BLOCK_LAYERS, Block, BlockCriteria, detect_blocks, pc_analysis
from ..similarity.engine import CompareModel, Comparison, ComparisonPass, PassSettings, compare
from ..similarity.measures import Measure
from ..similarity.results import relative_depth_match

__all__ = ["CLASSES", "DEFAULT_MAX_BYTES", "SeedSide", "SeedsResult", "Stat", "across_seeds", "class_stats", "pass_bytes"]

DEFAULT_MAX_BYTES = 8 << 30  # what one pass may hold (per process: each Ray worker holds the same)
CLASSES = ("outside", "partly", "inside")  # how many of the pair's two layers lie in their model's block: 0, 1, 2
MATCHING = ("within a side: the same layer (same name; a side is one architecture); across sides: the other model's "
            "layer nearest in relative depth, index / (L - 1) over the compared layers in forward order")


@dataclass
class Stat:
    """Mean, sample sd (ddof 1; NaN below 2 values) and count of the finite values, with their range."""

    mean: float
    sd: float
    n: int
    min: float
    max: float

    @classmethod
    def of(cls, values) -> Stat:
        v = np.asarray(values, dtype=float).ravel()
        v = v[np.isfinite(v)]
        nan = float("nan")
        if not v.size:
            return cls(nan, nan, 0, nan, nan)
        return cls(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else nan, int(v.size), float(v.min()), float(v.max()))


@dataclass
class SeedSide:
    """One side's models on their shared layers: who they are, their blocks, and which layers the blocks cover."""

    label: str
    spec: str
    models: list[dict]  # each model's provenance + its name in results ("ref")
    layers: list[str]
    boundaries: list[int]
    blocks: list[list[Block]]  # per model
    pc1: np.ndarray  # (M, L) PC1 share of variance per model and layer
    within_model: np.ndarray  # (M, L, L) each model's own CKA map, from the pass

    @property
    def refs(self) -> list[str]:
        return [m["ref"] for m in self.models]

    @property
    def inside(self) -> np.ndarray:
        """(M, L) bool: layer l of model m lies in one of m's blocks."""
        out = np.zeros((len(self.models), len(self.layers)), dtype=bool)
        for m, blocks in enumerate(self.blocks):
            for b in blocks:
                out[m, b.start : b.stop + 1] = True
        return out


@dataclass
class PairSet:
    """CKA along one side's layers for a set of model pairs: ``values[p, l]`` for pair ``pairs[p]`` at layer l
    (of the first model) against the ``match[l]``-th layer of the second, and each value's (pair, layer) class."""

    name: str
    pairs: list[tuple[str, str]]
    match: np.ndarray  # (L,) layer of the second model paired with each layer of the first
    values: np.ndarray  # (P, L)
    se: np.ndarray  # (P, L) jackknife SEs
    klass: np.ndarray  # (P, L) 0 outside, 1 partly, 2 inside

    def per_layer(self) -> list[Stat]:
        return [Stat.of(self.values[:, l]) for l in range(self.values.shape[1])]

    def by_class(self) -> dict[str, Stat]:
        return {c: Stat.of(self.values[self.klass == k]) for k, c in enumerate(CLASSES)}

    def to_json(self, value_name: str = "cka") -> dict:
        return {"pairs": [list(p) for p in self.pairs], "matched_layer": self.match.tolist(),
                value_name: self.values.tolist(), "se": self.se.tolist(), "class": self.klass.tolist()}

    def summary(self) -> dict:
        return {c: asdict(s) for c, s in self.by_class().items()} | {"all": asdict(Stat.of(self.values))}


def class_stats(values: np.ndarray, first_inside: np.ndarray, second_inside: np.ndarray, pairs: Sequence[tuple[int, int]],
                match: np.ndarray) -> np.ndarray:
    """(P, L) class of each value: how many of pair p's layers (the first model's l, the second's ``match[l]``) are inside
    their model's block (``first_inside`` (M1, L), ``second_inside`` (M2, L2))."""
    klass = np.zeros(values.shape, dtype=int)
    for p, (i, j) in enumerate(pairs):
        klass[p] = first_inside[i].astype(int) + second_inside[j][match].astype(int)
    return klass


@dataclass
class SeedsResult:
    """Everything ``across_seeds`` found: both sides, the three pair sets (within A, within B, A x B on each side's
    layers), warnings and provenance. ``summary()`` is the inside/outside table; ``layer_rows()`` the per-layer one."""

    a: SeedSide
    b: SeedSide
    sets: dict[str, PairSet]  # within_a, within_b, across_on_a, across_on_b
    warnings: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    # other measures of the same pass, as JSON: key -> {"measure": describe(), "summary": {set: {class: stat}},
    # "pair_sets": {set: PairSet.to_json("value")}} (no side labels in it: relabelling leaves it as it is)
    measures: dict = field(default_factory=dict)

    def summary(self) -> dict:
        out = {name: ps.summary() for name, ps in self.sets.items()}
        out["models"] = {"a": len(self.a.models), "b": len(self.b.models)}
        out["pairs"] = {name: len(ps.pairs) for name, ps in self.sets.items()}
        out["models_with_a_block"] = {"a": sum(bool(b) for b in self.a.blocks), "b": sum(bool(b) for b in self.b.blocks)}
        return out

    def layer_rows(self) -> list[dict]:
        """One row per layer of each side: within-side and across-side CKA over pairs, and block coverage."""
        rows = []
        for key, side, other in (("a", self.a, self.b), ("b", self.b, self.a)):
            within, across = self.sets[f"within_{key}"], self.sets[f"across_on_{key}"]
            n = len(side.layers)
            for l, (w, x) in enumerate(zip(within.per_layer(), across.per_layer())):
                rows.append({
                    "side": key, "label": side.label, "index": l, "layer": side.layers[l],
                    "relative_depth": l / (n - 1) if n > 1 else 0.0, "matched_layer": other.layers[int(across.match[l])],
                    "within_mean": w.mean, "within_sd": w.sd, "within_n": w.n,
                    "across_mean": x.mean, "across_sd": x.sd, "across_n": x.n,
                    "block_share": float(side.inside[:, l].mean()), "mean_pc1": float(np.nanmean(side.pc1[:, l])),
                })
        return rows

    def to_json(self) -> dict:
        def side(s: SeedSide) -> dict:
            return {"label": s.label, "spec": s.spec, "layers": s.layers, "stage_boundaries": s.boundaries,
                    "models": s.refs,
                    "blocks": {r: [asdict(b) | {"size": b.size} for b in bl] for r, bl in zip(s.refs, s.blocks)},
                    "pc1_fraction": {r: p.tolist() for r, p in zip(s.refs, s.pc1)}}

        doc = {"summary": self.summary(), "layers": self.layer_rows(), "sides": {"a": side(self.a), "b": side(self.b)},
               "pair_sets": {k: v.to_json() for k, v in self.sets.items()}, "warnings": self.warnings,
               "provenance": self.provenance}
        return doc | ({"measures": self.measures} if self.measures else {})

    def csv_text(self) -> str:
        rows = self.layer_rows()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()

    def save(self, out: str | Path) -> list[Path]:
        """``across_seeds.json`` (all of it, strict JSON) and ``across_seeds.csv`` (per layer), atomically."""
        out = Path(out)
        return [atomic_write_json(out / "across_seeds.json", self.to_json()),
                atomic_write_text(out / "across_seeds.csv", self.csv_text())]


def pass_bytes(total_layers: int, batch_size: int, num_batches: int) -> dict:
    """What one pass over ``total_layers`` layers (all models) holds: each minibatch's U-centred float64 Grams and the
    all-pairs product, and the per-minibatch T x T matrices the jackknife keeps."""
    grams = total_layers * batch_size * batch_size * 8
    kept = total_layers * total_layers * 8 * (num_batches + 3)
    return {"grams_per_batch": grams, "jackknife_matrices": kept, "total": grams + kept}


def _with_block_layers(m: CompareModel) -> CompareModel:
    """hubcompare ResNets default to the layers blocks are calibrated on (stem + every block output)."""
    if m.layers is None and hasattr(m.model, "forward_taps"):
        return CompareModel(m.ref, m.model, m.provenance, list(DEFAULT_BLOCK_LAYERS))
    return m


def _identity(m: CompareModel) -> str:
    p = m.provenance
    return str(p.get("resolved") or p.get("path") or m.ref)


def _check_sides(models_a, models_b, label_a, label_b) -> None:
    for label, models in ((label_a, models_a), (label_b, models_b)):
        if not models:
            raise OverlappingSidesError(f"side {label} has no model: name at least one model per side.")
    ids_a = {_identity(m): m.ref for m in models_a}
    both = [(ids_a[_identity(m)], m.ref) for m in models_b if _identity(m) in ids_a]
    if both:
        raise OverlappingSidesError(
            f"{both[0][0]} (side {label_a}) and {both[0][1]} (side {label_b}) are the same model: a model compared with "
            "itself has CKA 1 and would inflate the across-sides numbers; list each model on one side only.")


def _check_architecture(names: list[list[str]], refs: list[str], label: str) -> None:
    first = names[0]
    for ref, n in zip(refs[1:], names[1:]):
        if n != first:
            raise SideArchitectureError(
                f"side {label} mixes architectures: {refs[0]} has {len(first)} compared layers ({first[0]} .. {first[-1]}) "
                f"and {ref} {len(n)} ({n[0]} .. {n[-1]}); seeds are compared layer by layer, so name one architecture per "
                "side (e.g. registry:population=P,depth=56,width=2) or choose layers they all have.", params=("layers",))


def _pair_set(name: str, comp: Comparison, first: list[int], second: list[int], pairs: list[tuple[int, int]],
              match: np.ndarray, inside_1: np.ndarray, inside_2: np.ndarray, refs: list[str],
              matrices: tuple[np.ndarray, np.ndarray] | None = None) -> PairSet:
    """Values of ``pairs`` (indices into ``first`` and ``second``, positions of models in the pass) from the pass's
    (value, se) matrices over every layer of every model (default: linear CKA's; an asymmetric measure's rows are the
    first model's layers)."""
    value, se_all = matrices if matrices is not None else (comp.value, comp.se)
    L = len(match)
    values, se = np.full((len(pairs), L), np.nan), np.full((len(pairs), L), np.nan)
    for p, (i, j) in enumerate(pairs):
        oi, oj = comp.offsets[first[i]], comp.offsets[second[j]]
        rows, cols = oi + np.arange(L), oj + match
        values[p], se[p] = value[rows, cols], se_all[rows, cols]
    klass = class_stats(values, inside_1, inside_2, pairs, match)
    names = [(refs[first[i]], refs[second[j]]) for i, j in pairs]
    return PairSet(name, names, match, values, se, klass)


def across_seeds(
    models_a: Sequence[CompareModel],
    models_b: Sequence[CompareModel],
    dataset: ImageDataset,
    batch_size: int | None = None,
    passes: int = 1,
    seed: int = 0,
    num_examples: int | None = None,
    *,
    label_a: str = "A",
    label_b: str = "B",
    spec_a: str | None = None,
    spec_b: str | None = None,
    pc_examples: int = 1024,
    criteria: BlockCriteria = BlockCriteria(),
    on_batch: Callable[[int, int], None] | None = None,
    on_model: Callable[[int, int, str], None] | None = None,
    device="cpu",
    compare_fn: Callable[..., Comparison] = compare,
    max_bytes: int = DEFAULT_MAX_BYTES,
    measures: Sequence[Measure] = (),
) -> SeedsResult:
    """Cross-model CKA between every pair of seeds of two sides at matching layers, and each model's block (see the
    module doc). All models run in one pass (``compare_fn``: :func:`~hubcompare.similarity.engine.compare`, or a
    :class:`~hubcompare.similarity.distributed.RayShards`' ``compare`` to shard it); the PC analysis for the blocks
    runs here, one model at a time (``on_model(k, total, ref)`` before each). Default layers of hubcompare ResNets:
    stem + every block output (what the block criteria were set on). ``measures``: other similarity measures computed
    in the same pass, each with the same pair sets and classes (``SeedsResult.measures``)."""
    _check_sides(models_a, models_b, label_a, label_b)
    models = [_with_block_layers(m) for m in (*models_a, *models_b)]
    ma = len(models_a)
    idx_a, idx_b = list(range(ma)), list(range(ma, len(models)))
    refs = [m.ref for m in models]
    if len(set(refs)) != len(refs):
        raise OverlappingSidesError(f"two models share the name {next(r for r in refs if refs.count(r) > 1)}: name each once.")
    settings = PassSettings(batch_size=batch_size, passes=passes, seed=seed, num_examples=num_examples, device=device,
                            measures=tuple(measures), measure_pairs="across")  # the pair sets are all across models
    with ComparisonPass(models, dataset, settings) as run:  # checks, layers
        names, num_batches, batch_size = run.layer_names, len(run.plan), run.batch_size  # None: the plan's choice
    _check_architecture([names[i] for i in idx_a], refs[:ma], label_a)
    _check_architecture([names[i] for i in idx_b], refs[ma:], label_b)
    total = sum(len(n) for n in names)
    need = pass_bytes(total, batch_size, num_batches)
    if need["total"] > max_bytes:
        raise ComparisonTooLargeError(
            f"{len(models)} models x their layers = {total} layers in one pass would hold ~{need['total'] / 2**30:.1f} GiB "
            f"({need['grams_per_batch'] / 2**30:.1f} GiB of Grams per minibatch of {batch_size}, "
            f"{need['jackknife_matrices'] / 2**30:.1f} GiB of per-minibatch matrices over {num_batches} minibatches), over "
            f"the limit of {max_bytes / 2**30:.1f} GiB: compare fewer layers (e.g. layers=['stem', '*.out']), fewer models, "
            "smaller batches or fewer passes, or raise max_bytes on a larger machine.",
            params=("layers", "batch_size", "passes", "max_bytes"))
    comp = compare_fn(models, dataset, settings, on_batch=on_batch)
    sides = []
    for label, spec, idx in ((label_a, spec_a, idx_a), (label_b, spec_b, idx_b)):
        blocks, pc1, within = [], [], []
        for k in idx:
            if on_model:
                on_model(k, len(models), refs[k])
            own = comp.pair(k, k)
            pcs = pc_analysis(models[k], dataset, pc_examples, device=device)
            blocks.append(detect_blocks(own.value, pcs.fraction, own.layers_a, criteria))
            pc1.append(pcs.fraction)
            within.append(own.value)
        cap = comp.captures[idx[0]]
        sides.append(SeedSide(label, spec or label, [models[k].provenance | {"ref": refs[k]} for k in idx], cap.names,
                              cap.stage_boundaries(), blocks, np.stack(pc1), np.stack(within)))
    a, b = sides
    la, lb = len(a.layers), len(b.layers)
    ia, ib = a.inside, b.inside
    within_pairs = lambda m: [(i, j) for i in range(m) for j in range(i + 1, m)]  # noqa: E731
    cross = [(i, j) for i in range(len(idx_a)) for j in range(len(idx_b))]
    def pair_sets(matrices=None) -> dict[str, PairSet]:
        return {
            "within_a": _pair_set("within_a", comp, idx_a, idx_a, within_pairs(len(idx_a)), np.arange(la), ia, ia, refs, matrices),
            "within_b": _pair_set("within_b", comp, idx_b, idx_b, within_pairs(len(idx_b)), np.arange(lb), ib, ib, refs, matrices),
            "across_on_a": _pair_set("across_on_a", comp, idx_a, idx_b, cross, relative_depth_match(la, lb), ia, ib, refs,
                                     matrices),
            "across_on_b": _pair_set("across_on_b", comp, idx_b, idx_a, [(j, i) for i, j in cross],
                                     relative_depth_match(lb, la), ib, ia, refs, matrices),
        }

    sets = pair_sets()
    extra = {}
    for m in measures:
        if m.key == "cka":
            continue  # the main result
        est = comp.measures[m.key]
        by_set = pair_sets((est.value.numpy(), est.se.numpy()))
        extra[m.key] = {"measure": m.describe(), "summary": {k: ps.summary() for k, ps in by_set.items()},
                        "pair_sets": {k: ps.to_json("value") for k, ps in by_set.items()}}
    warnings = list(comp.warnings)
    for side in (a, b):
        if len(side.models) == 1:
            warnings.append(f"side {side.label} has one model: no seed pairs within it, so its within-side CKA is undefined "
                            "(NaN, n = 0); add seeds to see how much seeds of this architecture share.")
    provenance = {
        "sides": {k: {"label": s.label, "spec": s.spec, "models": s.models} for k, s in (("a", a), ("b", b))},
        **comp.settings,
        "layer_matching": MATCHING,
        "block_detection": asdict(criteria) | {"pc_examples": min(pc_examples, len(dataset)),
                                               "within_model_cka": "from the same pass"},
        "pass": {"models": len(models), "layers": total, "estimated_bytes": need, "max_bytes": max_bytes},
    }
    return SeedsResult(a, b, sets, warnings, provenance, extra)
