"""The CKA kinds of comparison (cross-cka, cka within one model, blocks): prepare, compute into the store, export.

Their key holds what changes the numbers: each model's reference, resolved reference and commit, the sha256 of
its weights and config files as they are on disk (a retrained or replaced checkpoint gets a new key), the
dataset's name, split and fingerprint, the layers the pass taps (globs resolved against the model), the batch
plan, passes, seed, examples, the block criteria and PC sample, and hubcompare's version. Labels and the figure
format are presentation: a stored result is re-labelled and re-rendered from its JSON on export.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..data.datasets import ImageDataset
from ..hub.references import resolve_reference
from ..models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from ..models.devices import resolve_device
from ..models.inputs import InputSpec
from ..provenance import atomic_write_bytes, atomic_write_json, package_versions, sha256_file
from ..results.store import StoredResult
from ..similarity.batchplan import BatchPlan, choose_batch_plan
from ..similarity.blocks import DEFAULT_BLOCK_LAYERS, Block, BlockCriteria, BlockReport, PCAnalysis, analyze_blocks
from ..similarity.capture import LayerCapture
from ..similarity.cka import MIN_BATCH
from ..similarity.engine import CompareModel, PassSettings, comparison_dataset
from ..similarity.engine import compare as local_compare
from ..similarity.labels import file_slugs, unique_labels
from ..similarity.measures import measure_from_key
from ..similarity.plots import plot_block_report, plot_cka, plot_cka_grid
from ..similarity.results import CKAResult
from .kindspec import MAX_MODELS, FloatOption, Heatmaps, IntOption, KindSpec, Prepared

if TYPE_CHECKING:  # annotations only: requests.py reads the kinds' specs
    from .requests import ComparisonRequest

__all__ = ["BLOCKS", "CKA", "CROSS_CKA", "KINDS", "PassState", "batch_plan_from_json", "block_report_from_json",
           "cka_result_from_json", "copy_file", "device_text", "finish_pair", "labels_for", "model_identity", "model_records",
           "pass_state", "prepare_pass", "plan_warnings", "run_pass", "smallest_batch", "tapped_layers"]

LABEL_KEYS = ("architecture", "depth", "width", "seed", "data_fraction", "dataset")  # what default labels are made of


@dataclass
class PassState:
    """What prepare found for compute: the models (built, layers chosen), the data, the plan, the device, labels."""

    models: list[CompareModel]
    dataset: ImageDataset
    plan: BatchPlan
    device: torch.device
    names: list[str]


# --- shared by the three kinds ---------------------------------------------------------------------
def _identity(ref: str, resolved) -> dict:
    """What identifies a model's numbers: its references, its commit, and the hashes of its files as on disk."""
    ident = {"ref": ref, "resolved": str(resolved.pinned), "commit_sha": resolved.commit_sha,
             "weights_sha256": None, "config_sha256": None}
    folder = resolved.path
    if folder is not None:
        for key, name in (("weights_sha256", WEIGHTS_FILE), ("config_sha256", CONFIG_FILE)):
            if (Path(folder) / name).is_file():
                ident[key] = sha256_file(Path(folder) / name)
        if resolved.commit_sha is None:  # a local folder: where it is, too (its provenance records the path)
            ident["path"] = str(Path(folder).expanduser().resolve())
    return ident


def _tapped(m: CompareModel, ds: ImageDataset) -> list[str]:
    """The layers a pass taps in ``m`` on ``ds``, as the engine chooses them (a head of another class count left out)."""
    num_classes = getattr(m.model, "num_classes", None)
    exclude = ["logits", "output"] if num_classes is not None and num_classes != ds.num_classes else []
    spec = InputSpec.from_model(m.model, ds.image_shape)
    return LayerCapture(m.model, m.layers, exclude=exclude, example=spec(ds.images[:2]), name=m.ref).names


def _where(dev: torch.device) -> str:
    return f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)


def _model_records(models: list[CompareModel], names: list[str]) -> list[dict]:
    """Per model, what export needs to name it again: its reference, label, and the metadata default labels use."""
    return [{"ref": m.ref, "label": n, "info": {k: m.provenance[k] for k in LABEL_KEYS if m.provenance.get(k) is not None}}
            for m, n in zip(models, names)]


def labels_for(stored: StoredResult, req: ComparisonRequest) -> list[str]:
    """The labels a fresh run of ``req`` gives the stored result's models (``req.labels``, else the card names)."""
    recs = stored.summary["models"]
    return unique_labels([r["info"] for r in recs], [r["ref"] for r in recs], list(req.labels) if req.labels else None)


def _prepare_pass(req: ComparisonRequest, ctx, block_layers: bool = False):
    """Resolve and build the models, choose the dataset, the plan and the layers: the key's inputs and the state."""
    dev = resolve_device(ctx.device)  # a device this machine lacks is refused before any model is loaded
    models, identities, notices, aliases = [], [], [], []
    for i, ref in enumerate(req.refs):
        ctx.on_progress(f"loading {ref}", i, len(req.refs))
        resolved = resolve_reference(ref, ctx.registry, ctx.api, max_params=ctx.max_params)
        notices += resolved.notices
        m = CompareModel.from_resolved(resolved, req.layers, ref=ref)
        if block_layers and m.layers is None and hasattr(m.model, "forward_taps"):
            m = CompareModel(m.ref, m.model, m.provenance, list(DEFAULT_BLOCK_LAYERS))
        models.append(m)
        identities.append(_identity(ref, resolved))
        aliases += [ref, str(resolved.pinned)]
    state = _pass_state(models, req, comparison_dataset(models, req.dataset, req.split, ctx.data_dir), dev)
    ds, n, plan = state.dataset, state.plan.num_examples, state.plan
    key_inputs = {
        "models": identities,
        "dataset": {"name": ds.name, "split": ds.split, "fingerprint": ds.fingerprint, "size": len(ds)},
        "layers": [_tapped(m, ds) for m in models],
        "settings": {"num_examples": n, "batch_plan": plan.to_json(), "passes": req.passes, "seed": req.seed},
        "hubcompare": package_versions().get("hubcompare"),
    }
    return Prepared(key_inputs, "", list(dict.fromkeys(aliases)), ds.name, notices, state)


def _pass_state(models: list[CompareModel], req: ComparisonRequest, ds: ImageDataset, dev: torch.device) -> PassState:
    """The batch plan (:func:`choose_batch_plan` on the examples compared) and the labels (``req.labels``, else the card
    names) of a pass: one definition for the CLI, the service and the Python API (:mod:`.library`)."""
    n = len(ds) if req.examples is None else min(req.examples, len(ds))
    names = unique_labels([m.provenance for m in models], list(req.refs), list(req.labels) if req.labels else None)
    return PassState(models, ds, choose_batch_plan(n, req.batch_size, req.passes, smallest_batch(req)), dev, names)


def smallest_batch(req: ComparisonRequest) -> int:
    """The fewest examples a minibatch of ``req``'s pass may hold: the estimator's minimum, or more for a measure it
    names (``options.measures``: mknn needs k + 1)."""
    return max([MIN_BATCH] + [measure_from_key(k).smallest_batch() for k in req.options.get("measures") or ()])


def _run_pass(req: ComparisonRequest, st: PassState, on_progress, compare: Callable | None, **extra):
    """The CKA pass (every model once per minibatch) with progress as ``CKA on DATA SPLIT (DEVICE)`` (``CKA, rsa, ...``
    when other measures run in it)."""
    others = [m.name for m in extra.get("measures", ()) if m.name != "cka"]
    stage = f"{', '.join(['CKA', *others])} on {st.dataset.name} {req.split} ({_where(st.device)})"
    on_progress(stage, 0, st.plan.num_batches)
    settings = PassSettings(batch_size=st.plan.batch_size, passes=req.passes, seed=req.seed, num_examples=req.examples,
                            device=st.device, **extra)
    return (compare or local_compare)(st.models, st.dataset, settings, on_batch=lambda d, n: on_progress(stage, d, n))


def _finish(r: CKAResult, plan: BatchPlan, label_a: str, label_b: str) -> CKAResult:
    """Name a result's models and record the batch plan (how the batch size was chosen, the SE it allows)."""
    r.label_a, r.label_b = label_a, label_b
    r.provenance["batch_plan"] = plan.to_json()
    return r


def _plan_warnings(plan: BatchPlan) -> list[str]:
    w = plan.warning()
    return [w] if w else []


def _copy(src: Path, dst: Path) -> Path:
    return atomic_write_bytes(dst, src.read_bytes())


def _floats(values) -> np.ndarray:
    """A JSON list (of lists) of numbers with null for undefined, as floats with NaN."""
    def conv(v):
        return [conv(x) for x in v] if isinstance(v, list) else (np.nan if v is None else v)
    return np.array(conv(values), dtype=float)


def cka_result_from_json(d: dict) -> CKAResult:
    """A :class:`CKAResult` from its ``to_json`` (as written to ``cka.json``)."""
    return CKAResult(d["ref_a"], d["ref_b"], d["layers_a"], d["layers_b"], d["stage_boundaries_a"], d["stage_boundaries_b"],
                     _floats(d["cka"]), _floats(d["se"]), d["kind"], d["provenance"], d["warnings"], d.get("label_a"),
                     d.get("label_b"))


def block_report_from_json(d: dict) -> BlockReport:
    """A :class:`BlockReport` from its ``to_json`` (as written to ``blocks.json``), for printing and re-rendering."""
    names = {f.name for f in fields(Block)}
    blocks = [Block(**{k: (float("nan") if v is None and k != "mean_cka_pc1_removed" else v) for k, v in b.items() if k in names})
              for b in d["blocks"]]
    pcs = PCAnalysis(d["layers"], _floats(d["pc1_fraction"]), _floats(d["pc1_cosine"]), d["pc_examples"])
    return BlockReport(d["ref"], blocks, cka_result_from_json(d["cka"]), cka_result_from_json(d["cka_pc1_removed"]), pcs,
                       d["params"])


def batch_plan_from_json(d: dict) -> BatchPlan:
    """The :class:`BatchPlan` a result recorded (``provenance["batch_plan"]``)."""
    return BatchPlan(**{f.name: d[f.name] for f in fields(BatchPlan)})


# --- cross-cka and cka --------------------------------------------------------------------------------
class _CKAKind:
    """cross-cka (two or more models, every pair from one pass) and cka (one model's layers against each other)."""

    def __init__(self, spec: KindSpec):
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def prepare(self, req: ComparisonRequest, ctx):
        prepared = _prepare_pass(req, ctx)
        names = prepared.state.names
        prepared.title = f"{self.name}: " + (" vs ".join(names) if self.name == "cross-cka" else names[0])
        return prepared

    def _pairs(self, n: int) -> list[tuple[int, int]]:
        return [(0, 0)] if self.name == "cka" else [(i, j) for i in range(n) for j in range(i + 1, n)]

    @staticmethod
    def _stem(i: int, j: int, slugs: list[str], n: int) -> str:
        return f"cka-{slugs[i]}-vs-{slugs[j]}" if n > 2 else "cka"

    def compute(self, req, prepared, staging: Path, on_progress, compare):
        st: PassState = prepared.state
        comp = _run_pass(req, st, on_progress, compare)
        n, slugs, results, pairs = len(st.models), file_slugs(st.names), {}, []
        for i, j in self._pairs(n):
            r = results[i, j] = _finish(comp.pair(i, j), st.plan, st.names[i], st.names[j])
            stem = self._stem(i, j, slugs, n)
            r.save(staging / stem)
            plot_cka(r, staging / f"{stem}.png")
            s = r.summary()
            pairs.append({"a": i, "b": j, "stem": stem, "mean_diagonal_cka": s["mean_diagonal_cka"], "mean_cka": s["mean_cka"],
                          "mean_off_diagonal_cka": r.mean_off_diagonal_cka, "max_se": r.max_se, "layers": list(r.shape)})
        if n > 2:
            plot_cka_grid(results, st.names, staging / "cka-grid.png")
        summary = {"models": _model_records(st.models, st.names), "batch_plan": st.plan.to_json(),
                   "dataset": st.dataset.describe(), "pairs": pairs}
        return summary, comp.warnings + _plan_warnings(st.plan)

    def export(self, stored: StoredResult, req: ComparisonRequest, out: Path) -> list[Path]:
        names = labels_for(stored, req)
        n, slugs, fmt = len(names), file_slugs(names), req.fmt
        written, results, relabelled = [], {}, False
        for p in stored.summary["pairs"]:
            i, j = p["a"], p["b"]
            src = p["stem"]
            r = results[i, j] = cka_result_from_json(json.loads(stored.file(f"{src}.json").read_text()))
            changed = (r.label_a, r.label_b) != (names[i], names[j])
            relabelled |= changed
            r.label_a, r.label_b = names[i], names[j]
            stem = out / self._stem(i, j, slugs, n)
            written.append(_copy(stored.file(f"{src}.npz"), stem.with_suffix(".npz")))
            written.append(atomic_write_json(stem.with_suffix(".json"), r.to_json()) if changed
                           else _copy(stored.file(f"{src}.json"), stem.with_suffix(".json")))
            written.append(plot_cka(r, stem.with_suffix(f".{fmt}")) if changed or fmt != "png"
                           else _copy(stored.file(f"{src}.png"), stem.with_suffix(".png")))
        if n > 2:
            grid = out / f"cka-grid.{fmt}"
            written.append(plot_cka_grid(results, names, grid) if relabelled or fmt != "png"
                           else _copy(stored.file("cka-grid.png"), grid))
        return written


# --- blocks -------------------------------------------------------------------------------------------
def _criteria(req: ComparisonRequest) -> BlockCriteria:
    o = req.options
    return BlockCriteria().override(**{k: o.get(k) for k in ("pc1_threshold", "cka_threshold", "min_size", "max_gap",
                                                              "min_mean_pc1")})


class _BlocksKind:
    """One model's block structure: CKA with and without PC1, PC1 shares and cosines, the detected blocks."""

    DEFAULT_PC_EXAMPLES = 1024
    spec = KindSpec(
        name="blocks", summary="one model's block structure: CKA with and without PC1, PC1 shares, the detected blocks",
        refs=(1, 1), estimator=True, sized=True,
        options=(IntOption(name="pc_examples", doc="examples for the PC1 analysis", low=2, high=1_000_000, server_cap="examples"),
                 FloatOption(name="pc1_threshold", doc="a block layer's least PC1 share", low=0.0, high=1.0),
                 FloatOption(name="cka_threshold", doc="a block's least mean CKA", low=0.0, high=1.0),
                 IntOption(name="min_size", doc="a block's fewest layers", low=1, high=10_000),
                 IntOption(name="max_gap", doc="layers below threshold a block may span", low=0, high=10_000),
                 FloatOption(name="min_mean_pc1", doc="a block's least mean PC1 share", low=0.0, high=1.0)),
        files={"document": "blocks.json", "figure": "blocks.{fmt}", "cka_figure": "cka.{fmt}"},
        heatmaps=Heatmaps(key="cka", within=True, figure_role="cka_figure"), tables=("blocks",))
    name = spec.name

    def prepare(self, req: ComparisonRequest, ctx):
        prepared = _prepare_pass(req, ctx, block_layers=True)
        st: PassState = prepared.state
        pc = int(req.options.get("pc_examples", self.DEFAULT_PC_EXAMPLES))
        prepared.key_inputs["options"] = {"pc_examples": min(pc, len(st.dataset)), "criteria": asdict(_criteria(req))}
        prepared.title = f"blocks: {st.names[0]}"
        return prepared

    def compute(self, req, prepared, staging: Path, on_progress, compare):
        st: PassState = prepared.state
        (m,), name = st.models, st.names[0]
        pc = int(req.options.get("pc_examples", self.DEFAULT_PC_EXAMPLES))
        stage = f"CKA on {st.dataset.name} {req.split} ({_where(st.device)})"
        on_progress(stage, 0, st.plan.num_batches)
        rep = analyze_blocks(m, st.dataset, st.plan.batch_size, req.passes, req.seed, req.examples, pc, _criteria(req),
                             on_batch=lambda d, n: on_progress(stage, d, n), device=st.device,
                             compare_fn=compare or local_compare)
        for r in (rep.cka, rep.cka_pc1_removed):
            _finish(r, st.plan, name, name)
        atomic_write_json(staging / "blocks.json", rep.to_json() | {"label": name})
        plot_block_report(rep, staging / "blocks.png")
        plot_cka(rep.cka, staging / "cka.png", rep.blocks)
        summary = {"models": _model_records(st.models, st.names), "batch_plan": st.plan.to_json(),
                   "dataset": st.dataset.describe(), "num_blocks": len(rep.blocks),
                   "blocks": [{"first": b.layers[0], "last": b.layers[-1], "size": b.size, "mean_cka": b.mean_cka,
                               "mean_pc1": b.mean_pc1} for b in rep.blocks],
                   "pc1_summary": rep.pcs.fraction_summary(), "criteria": rep.params}
        return summary, rep.cka.warnings + _plan_warnings(st.plan)

    def export(self, stored: StoredResult, req: ComparisonRequest, out: Path) -> list[Path]:
        (name,) = labels_for(stored, req)
        src = stored.file("blocks.json")
        d = json.loads(src.read_text())
        changed = d.get("label") != name
        if changed:
            d["label"] = name
            for part in ("cka", "cka_pc1_removed"):
                d[part]["label_a"] = d[part]["label_b"] = name
        written = [atomic_write_json(out / "blocks.json", d) if changed else _copy(src, out / "blocks.json")]
        if changed or req.fmt != "png":
            rep = block_report_from_json(d)
            written += [plot_block_report(rep, out / f"blocks.{req.fmt}"), plot_cka(rep.cka, out / f"cka.{req.fmt}", rep.blocks)]
        else:
            written += [_copy(stored.file("blocks.png"), out / "blocks.png"), _copy(stored.file("cka.png"), out / "cka.png")]
        return written


CROSS_CKA = _CKAKind(KindSpec(
    name="cross-cka", summary="linear CKA between every layer of two or more models, every pair from one pass",
    refs=(2, MAX_MODELS), estimator=True, sized=True, many_sides_kind="across-seeds",
    files={"document": "cka*.json", "arrays": "cka*.npz", "figure": "cka*.{fmt}"}, heatmaps=Heatmaps()))
CKA = _CKAKind(KindSpec(
    name="cka", summary="linear CKA between one model's layers", refs=(1, 1), estimator=True, sized=True,
    files={"document": "cka.json", "arrays": "cka.npz", "figure": "cka.{fmt}"}, heatmaps=Heatmaps(within=True)))
BLOCKS = _BlocksKind()
KINDS = (CROSS_CKA, CKA, BLOCKS)

# shared with the other kinds (seed_kinds, probe_kinds): one definition of a model's identity, its tapped layers, ...
model_identity, tapped_layers, device_text, model_records = _identity, _tapped, _where, _model_records
plan_warnings, copy_file = _plan_warnings, _copy
pass_state, run_pass, finish_pair = _pass_state, _run_pass, _finish  # the Python API's pass is the CLI's (library.py)
prepare_pass = _prepare_pass  # compare (measure_kinds) keys its pass as cross-cka does
