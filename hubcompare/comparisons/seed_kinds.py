"""across-seeds (and cross-cka of two population sides) as a stored comparison: prepare, compute, export.

Its key holds what changes the numbers: each side as written and, in order, each member's identity (reference,
commit, sha256 of its weights and config as on disk: :func:`.cka_kinds.model_identity`), the dataset's name, split,
fingerprint and size, the layers each model's pass taps, the batch plan, passes, seed, examples, the PC sample and
the block criteria, and hubcompare's version. Not in it: the device, threads, the backend (Ray shards give the same
numbers), ``max_memory_gb`` (a refusal threshold), the labels and the figure format. A stored result asked for under
other labels is the same result: its JSON and CSV are relabelled and its figure drawn again from the JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.datasets import ImageDataset
from ..hub.references import resolve_reference
from ..models.devices import resolve_device
from ..populations.seed_plots import plot_across_seeds
from ..populations.seeds import PairSet, SeedSide, SeedsResult, across_seeds
from ..populations.sides import expand_side
from ..provenance import atomic_write_json, atomic_write_text, package_versions
from ..results.store import StoredResult
from ..similarity.batchplan import BatchPlan, choose_batch_plan
from ..similarity.blocks import DEFAULT_BLOCK_LAYERS, Block, BlockCriteria
from ..similarity.engine import CompareModel, comparison_dataset
from ..similarity.engine import compare as local_compare
from ..similarity.labels import default_label
from ..similarity.measures import measure_from_key
from .cka_kinds import copy_file, device_text, model_identity, model_records, plan_warnings, smallest_batch, tapped_layers
from .kindspec import FloatOption, IntOption, KindSpec, Prepared
from .measure_kinds import MAX_MEASURES, MeasuresOption, optional_measures

if TYPE_CHECKING:  # annotations only: requests.py reads the kinds' specs
    from .requests import ComparisonRequest

__all__ = ["ACROSS_SEEDS", "DEFAULT_MAX_MEMORY_GB", "DEFAULT_PC_EXAMPLES", "KINDS", "labels_for", "seeds_result_from_json",
           "side_labels"]

DEFAULT_PC_EXAMPLES = 1024
DEFAULT_MAX_MEMORY_GB = 8.0
FILES = ("across_seeds.json", "across_seeds.csv")


def side_labels(members: tuple[list[tuple[dict, str]], list[tuple[dict, str]]], specs: tuple[str, str],
                given: tuple[str | None, str | None]) -> tuple[str, str]:
    """Given labels, else each side's architecture as its card names it (``ResNet-56 (2x)``) when its models (two or
    more) share one, else the side as written; two equal labels get (A) and (B). ``members``: per side, each model's
    (metadata, reference)."""
    def name(side, spec: str) -> str:
        names = {default_label(info, ref) for info, ref in side}
        return names.pop() if len(names) == 1 and len(side) > 1 else spec

    la, lb = given[0] or name(members[0], specs[0]), given[1] or name(members[1], specs[1])
    if la == lb and not (given[0] and given[1]):
        la, lb = f"{la} (A)", f"{lb} (B)"
    return la, lb


def _given(req: ComparisonRequest) -> tuple[str | None, str | None]:
    labels = tuple(req.labels or (None, None))
    return labels[0] or None, labels[1] or None


def labels_for(stored: StoredResult, req: ComparisonRequest) -> tuple[str, str]:
    """The labels a fresh run of ``req`` gives the stored result's sides, from the members' metadata it recorded."""
    sides = stored.summary["sides"]
    members = tuple([(r["info"], r["ref"]) for r in sides[k]] for k in ("a", "b"))
    return side_labels(members, (req.refs[0], req.refs[1]), _given(req))  # type: ignore[arg-type]


@dataclass
class SeedsState:
    """What prepare found for compute: each side's models (layers chosen), the data, the plan, the device, labels."""

    models_a: list[CompareModel]
    models_b: list[CompareModel]
    dataset: ImageDataset
    plan: BatchPlan
    device: torch.device
    labels: tuple[str, str]


def _block_layers(m: CompareModel) -> CompareModel:
    """hubcompare ResNets default to the layers blocks are calibrated on (as populations.seeds does before its pass)."""
    if m.layers is None and hasattr(m.model, "forward_taps"):
        return CompareModel(m.ref, m.model, m.provenance, list(DEFAULT_BLOCK_LAYERS))
    return m


def _sanitise(obj):
    """A JSON-ready copy with NaN as None (summaries of sides with no seed pairs)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _sanitise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitise(v) for v in obj]
    return obj


def _measures(req: ComparisonRequest) -> list:
    return [measure_from_key(k) for k in req.options.get("measures") or ()]


class _AcrossSeedsKind:
    """Two sides of seeds (each one architecture) in one pass: within and across sides, inside vs outside the blocks."""

    spec = KindSpec(
        name="across-seeds", summary="CKA within and across two sides of seeds, inside vs outside the blocks, one pass",
        refs=(2, 2), sides=True, estimator=True, sized=True,
        options=(IntOption(name="pc_examples", doc="examples for the PC1 analysis", low=2, high=1_000_000, server_cap="examples"),
                 FloatOption(name="max_memory_gb", doc="refuse a pass over this memory before any work", low=0.01, high=1e6,
                             in_key=False),
                 MeasuresOption(name="measures", doc="other similarity measures in the same pass, each with the same pair "
                                "sets and classes (default: none; CKA always)", max_len=MAX_MEASURES)),
        files={"document": FILES[0], "table": FILES[1], "figure": "across_seeds.{fmt}"}, form_options=optional_measures)
    name = spec.name

    def prepare(self, req: ComparisonRequest, ctx) -> Prepared:
        dev = resolve_device(ctx.device)  # a device this machine lacks is refused before any model is loaded
        given = _given(req)
        sides, identities, notices, aliases = [], {}, [], []
        for key, spec, label in (("a", req.refs[0], given[0]), ("b", req.refs[1], given[1])):
            label = label or spec
            ctx.on_progress(f"loading {label}: finding its models", 0, None)
            refs = expand_side(spec, ctx.registry, ctx.api)
            models, ids = [], []
            for i, ref in enumerate(refs):
                ctx.on_progress(f"loading {label}: {i + 1}/{len(refs)} {ref}", i, len(refs))
                resolved = resolve_reference(ref, ctx.registry, ctx.api, max_params=ctx.max_params)
                notices += resolved.notices
                models.append(CompareModel.from_resolved(resolved, req.layers, ref=ref))
                ids.append(model_identity(ref, resolved))
                aliases += [ref, str(resolved.pinned)]
            sides.append(models)
            identities[key] = {"spec": spec, "models": ids}
        models_a, models_b = sides
        infos = tuple([(m.provenance, m.ref) for m in side] for side in sides)
        labels = side_labels(infos, (req.refs[0], req.refs[1]), given)  # type: ignore[arg-type]
        ds = comparison_dataset([*models_a, *models_b], req.dataset, req.split, ctx.data_dir)
        n = len(ds) if req.examples is None else min(req.examples, len(ds))
        plan = choose_batch_plan(n, req.batch_size, req.passes, smallest_batch(req))
        pc = int(req.options.get("pc_examples", DEFAULT_PC_EXAMPLES))
        key_inputs = {
            "sides": identities,
            "dataset": {"name": ds.name, "split": ds.split, "fingerprint": ds.fingerprint, "size": len(ds)},
            "layers": [tapped_layers(_block_layers(m), ds) for m in (*models_a, *models_b)],
            "settings": {"num_examples": n, "batch_plan": plan.to_json(), "passes": req.passes, "seed": req.seed,
                         "pc_examples": min(pc, len(ds)), "criteria": asdict(BlockCriteria())}
            | ({"measures": [m.key for m in _measures(req)]} if req.options.get("measures") else {}),
            "hubcompare": package_versions().get("hubcompare"),
        }
        title = f"across-seeds: {labels[0]} ({_models(len(models_a))}) vs {labels[1]} ({_models(len(models_b))})"
        state = SeedsState(models_a, models_b, ds, plan, dev, labels)
        return Prepared(key_inputs, title, list(dict.fromkeys(aliases)), ds.name, notices, state)

    def compute(self, req: ComparisonRequest, prepared: Prepared, staging: Path, on_progress, compare):
        st: SeedsState = prepared.state
        k = len(st.models_a) + len(st.models_b)
        extra = "".join(f" + {m.key}" for m in _measures(req) if m.key != "cka")
        stage = f"CKA{extra}, {k} models in one pass on {st.dataset.name} {req.split} ({device_text(st.device)})"
        pcs = "PC1 shares per model (its block)"
        on_progress(stage, 0, st.plan.num_batches)
        max_gb = float(req.options.get("max_memory_gb", DEFAULT_MAX_MEMORY_GB))
        r = across_seeds(st.models_a, st.models_b, st.dataset, st.plan.batch_size, req.passes, req.seed, req.examples,
                         label_a=st.labels[0], label_b=st.labels[1], spec_a=req.refs[0], spec_b=req.refs[1],
                         pc_examples=int(req.options.get("pc_examples", DEFAULT_PC_EXAMPLES)), device=st.device,
                         compare_fn=compare or local_compare, max_bytes=int(max_gb * 2**30), measures=_measures(req),
                         on_batch=lambda d, n: on_progress(stage, d, n), on_model=lambda i, n, ref: on_progress(pcs, i, n))
        on_progress(pcs, k, k)
        r.provenance["batch_plan"] = st.plan.to_json()
        r.save(staging)
        plot_across_seeds(r, staging / "across_seeds.png")
        sides = {"a": model_records(st.models_a, [default_label(m.provenance, m.ref) for m in st.models_a]),
                 "b": model_records(st.models_b, [default_label(m.provenance, m.ref) for m in st.models_b])}
        summary = {"labels": list(st.labels), "sides": sides, "batch_plan": st.plan.to_json(),
                   "dataset": st.dataset.describe(), "across_seeds": _sanitise(r.summary())}
        if r.measures:
            summary["measures"] = _sanitise({key: m["summary"] for key, m in r.measures.items()})
        return summary, r.warnings + plan_warnings(st.plan)

    def export(self, stored: StoredResult, req: ComparisonRequest, out: Path) -> list[Path]:
        labels = labels_for(stored, req)
        old = tuple(stored.summary["labels"])
        if labels == old and req.fmt == "png":
            return [copy_file(stored.file(f), out / f) for f in (*FILES, "across_seeds.png")]
        if labels == old:
            r = seeds_result_from_json(json.loads(stored.file(FILES[0]).read_text()))
            written = [copy_file(stored.file(f), out / f) for f in FILES]
        else:
            r = relabel(seeds_result_from_json(json.loads(stored.file(FILES[0]).read_text())), labels)
            written = [atomic_write_json(out / FILES[0], r.to_json()), atomic_write_text(out / FILES[1], r.csv_text())]
        return written + [plot_across_seeds(r, out / f"across_seeds.{req.fmt}")]


def _models(n: int) -> str:
    return f"{n} model{'' if n == 1 else 's'}"


# --- a stored across_seeds.json back into a SeedsResult (for relabelling, the figure and the CLI's tables) ---------
def _floats(values, shape: tuple[int, ...]) -> np.ndarray:
    def conv(v):
        return [conv(x) for x in v] if isinstance(v, list) else (np.nan if v is None else v)
    return np.array(conv(values), dtype=float).reshape(shape)


_BLOCK_FIELDS = {f.name for f in fields(Block)}


def _block(d: dict) -> Block:
    return Block(**{k: (float("nan") if v is None and k != "mean_cka_pc1_removed" else v) for k, v in d.items()
                    if k in _BLOCK_FIELDS})


def seeds_result_from_json(d: dict) -> SeedsResult:
    """A :class:`SeedsResult` from its ``to_json`` (``across_seeds.json``); its ``to_json`` gives the same document
    back. Each model's own CKA map is not in the JSON (nothing written from it needs it): left empty."""
    sides = []
    for key in ("a", "b"):
        s, prov = d["sides"][key], d["provenance"]["sides"][key]
        refs, n_layers = s["models"], len(s["layers"])
        sides.append(SeedSide(s["label"], s["spec"], prov["models"], s["layers"], s["stage_boundaries"],
                              [[_block(b) for b in s["blocks"][r]] for r in refs],
                              _floats([s["pc1_fraction"][r] for r in refs], (len(refs), n_layers)),
                              np.zeros((len(refs), 0, 0))))
    sets = {}
    for name, ps in d["pair_sets"].items():
        match = np.array(ps["matched_layer"], dtype=int)
        shape = (len(ps["pairs"]), len(match))
        sets[name] = PairSet(name, [tuple(p) for p in ps["pairs"]], match, _floats(ps["cka"], shape), _floats(ps["se"], shape),
                             np.array(ps["class"], dtype=int).reshape(shape))
    return SeedsResult(sides[0], sides[1], sets, list(d["warnings"]), d["provenance"], d.get("measures") or {})


def relabel(r: SeedsResult, labels: tuple[str, str]) -> SeedsResult:
    """``r`` with its sides called ``labels``: the sides, the provenance and the warnings that name a side."""
    old = (r.a.label, r.b.label)
    prov = json.loads(json.dumps(r.provenance))
    r.a.label, r.b.label = labels
    for key, label in zip(("a", "b"), labels):
        prov["sides"][key]["label"] = label
    r.provenance = prov
    r.warnings = [_swap(w, old, labels) for w in r.warnings]
    return r


def _swap(warning: str, old: tuple[str, str], new: tuple[str, str]) -> str:
    """A warning about one side (``side LABEL has one model``) naming it by its new label."""
    for o, n in zip(old, new):
        if warning.startswith(f"side {o} has one model"):
            return f"side {n}" + warning[len(f"side {o}"):]
    return warning


ACROSS_SEEDS = _AcrossSeedsKind()
KINDS = (ACROSS_SEEDS,)
