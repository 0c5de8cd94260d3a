"""probes (linear probes per layer) and delete-blocks (accuracy as residual blocks go) as stored comparisons.

Their key holds what changes the numbers: the model's identity (reference, commit, sha256 of its weights and
config as on disk: :func:`.cka_kinds.model_identity`), the test split (and, for probes, the training split) by
name, fingerprint and size, the examples used, the layers probed (globs resolved against the model) or the
deletions made (each stage's deletable blocks), every numeric setting (probes: pooling, the L2 grid, the validation
share and seed, training examples, iterations, minibatch size; delete-blocks: minibatch size), the blocks shaded
(``auto``: detected from the model on the same examples; a file: its blocks as read) and hubcompare's version. Not in
it: the device, threads, ``memory_gb`` (how features are streamed, not what they are) and the figure format.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..data.datasets import ImageDataset, load_dataset
from ..errors import InvalidRequestError
from ..hub.references import resolve_reference
from ..models.devices import resolve_device
from ..models.inputs import InputSpec, unlike_training_data
from ..probes.deletion import DeletionResult, check_head, residual_stages
from ..probes.deletion import delete_blocks as run_deletion
from ..probes.features import DEFAULT_PROBE_LAYERS
from ..probes.linear import DEFAULT_L2_GRID, ProbeResult, probe_layers
from ..probes.plots import plot_deletion, plot_probes
from ..provenance import atomic_write_json, atomic_write_text, package_versions
from ..results.store import StoredResult
from ..similarity.blocks import analyze_blocks
from ..similarity.capture import LayerCapture
from ..similarity.engine import CompareModel, comparison_dataset
from ..similarity.labels import unique_labels
from .cka_kinds import copy_file, device_text, model_identity
from .kindspec import MAX_EXAMPLES, BoolOption, FileOption, FloatOption, IntOption, KindSpec, NumbersOption, Prepared

if TYPE_CHECKING:  # annotations only: requests.py reads the kinds' specs
    from .requests import ComparisonRequest

__all__ = ["DEFAULTS", "DELETE_BLOCKS", "KINDS", "PROBES", "deletion_result_from_json", "probe_result_from_json", "read_blocks"]

DEFAULTS = {"probes": {"batch_size": 256, "pool": False, "l2": list(DEFAULT_L2_GRID), "validation_fraction": 0.1,
                       "train_examples": None, "max_iter": 200, "memory_gb": 2.0, "blocks": "auto"},
            "delete-blocks": {"batch_size": 500, "blocks": "auto"}}


def read_blocks(value: str) -> list[dict]:
    """The blocks listed in a blocks.json (``blocks``) or a probes/deletion JSON (``detected_blocks``)."""
    try:
        data = json.loads(Path(value).read_text(encoding="utf-8"))
        listed = data["blocks"] if "blocks" in data else data["detected_blocks"]
        if not all(isinstance(b, dict) and isinstance(b.get("layers"), list) for b in listed):
            raise ValueError("a block without its list of layers")
        return listed
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise InvalidRequestError(f"options.blocks: {value} is not a blocks JSON from `hubcompare blocks` "
                                  f"({type(e).__name__}: {str(e)[:120]}); give auto, none or such a file",
                                  "options.blocks", params=("blocks",)) from None


@dataclass
class ProbeState:
    """What prepare found for compute: the model, its test (and training) data, the device, the settings in full."""

    model: CompareModel
    test: ImageDataset
    train: ImageDataset | None
    device: torch.device
    options: dict
    blocks: list[dict] | None  # from a file; None: "auto" or "none"


def _dataset_key(ds: ImageDataset) -> dict:
    return {"name": ds.name, "split": ds.split, "fingerprint": ds.fingerprint, "size": len(ds)}


class _ProbeKind:
    """probes or delete-blocks of one model: the model and the test split resolved cheaply, then the work."""

    def __init__(self, spec: KindSpec, stem: str):
        self.spec, self.stem = spec, stem

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def files(self) -> tuple[str, str]:
        return f"{self.stem}.json", f"{self.stem}.csv"

    def options_of(self, req: ComparisonRequest) -> dict:
        """Every setting of the kind, the defaults where the request does not say."""
        out = DEFAULTS[self.name] | dict(req.options)
        if req.batch_size is not None:
            out["batch_size"] = req.batch_size
        return out

    def prepare(self, req: ComparisonRequest, ctx) -> Prepared:
        dev = resolve_device(ctx.device)  # a device this machine lacks is refused before any model is loaded
        opts = self.options_of(req)
        blocks = None if opts["blocks"] in ("auto", "none") else read_blocks(opts["blocks"])
        (ref,) = req.refs
        ctx.on_progress(f"loading {ref}", 0, 1)
        resolved = resolve_reference(ref, ctx.registry, ctx.api, max_params=ctx.max_params)
        m = CompareModel.from_resolved(resolved, req.layers, ref=ref)
        test = comparison_dataset([m], req.dataset, "test", ctx.data_dir)
        n = len(test) if req.examples is None else min(req.examples, len(test))
        key_inputs: dict[str, Any] = {"models": [model_identity(ref, resolved)], "dataset": _dataset_key(test),
                                      "settings": {"num_examples": n, "batch_size": opts["batch_size"]},
                                      "blocks": {"source": opts["blocks"], "blocks": blocks},
                                      "hubcompare": package_versions().get("hubcompare")}
        train = None
        if self.name == "probes":
            train = load_dataset(test.name, "train", ctx.data_dir)
            if train.num_classes != test.num_classes:  # probe_layers refuses it too; here before the key
                raise InvalidRequestError(f"dataset: {test.name}'s train and test splits are not the same task",
                                          "dataset", params=("dataset",))
            key_inputs["train"] = _dataset_key(train)
            key_inputs["layers"] = _probed_layers(m, train)
            te = opts["train_examples"]
            key_inputs["settings"] |= {
                "pool": bool(opts["pool"]), "l2_grid": sorted({float(v) for v in opts["l2"]}, reverse=True),
                "validation_fraction": float(opts["validation_fraction"]), "seed": req.seed,
                "train_examples": te if te is not None and te < len(train) else None, "max_iter": opts["max_iter"]}
        else:
            check_head(m, test, "block deletion")
            stages = residual_stages(m.model)  # a model without deletable blocks is refused before any evaluation
            key_inputs["deletions"] = [[b.layer for b in st.deletable_tail] for st in stages]
        label = unique_labels([m.provenance], [ref])[0]
        return Prepared(key_inputs, f"{self.name}: {label}", list(dict.fromkeys([ref, str(resolved.pinned)])), test.name,
                        list(resolved.notices), ProbeState(m, test, train, dev, opts, blocks))

    def compute(self, req: ComparisonRequest, prepared: Prepared, staging: Path, on_progress, compare=None):
        st: ProbeState = prepared.state
        o = st.options
        where = device_text(st.device)
        if self.name == "probes":
            stage = f"probes on {st.test.name} ({where})"
            on_progress(stage, 0, None)
            result = probe_layers(st.model, st.train, st.test, bool(o["pool"]), [float(v) for v in o["l2"]],
                                  float(o["validation_fraction"]), req.seed, o["batch_size"], o["train_examples"], req.examples,
                                  o["max_iter"], int(float(o["memory_gb"]) * 2**30),
                                  on_step=lambda d, n: on_progress(stage, d, n), device=st.device)
        else:
            stage = f"deleting blocks, {st.test.name} test ({where})"
            on_progress(stage, 0, None)
            result = run_deletion(st.model, st.test, o["batch_size"], req.examples,
                                  on_step=lambda d, n: on_progress(stage, d, n), device=st.device)
        result.blocks, result.settings["blocks"] = self._blocks(st, req, on_progress)
        atomic_write_json(staging / self.files[0], result.to_json())
        atomic_write_text(staging / self.files[1], result.to_csv())
        (plot_probes if self.name == "probes" else plot_deletion)(result, staging / f"{self.stem}.png")
        m, test = st.model, st.test  # a model fed data unlike its training data is said, as the CKA kinds say it
        shift = unlike_training_data(m.ref, m.trained_on, test.name, InputSpec.from_model(m.model, test.image_shape),
                                     test.image_shape)
        return self._summary(result), [shift] if shift else []

    def _blocks(self, st: ProbeState, req: ComparisonRequest, on_progress) -> tuple[list[dict], dict]:
        """The blocks to shade and where they came from (``auto``: the block detector's defaults on the same examples)."""
        source = st.options["blocks"]
        if source == "none":
            return [], {"source": "none"}
        if source != "auto":
            return list(st.blocks or []), {"source": str(source)}
        plain = CompareModel(st.model.ref, st.model.model, st.model.provenance)  # the detector's own default layers
        stage = f"blocks: CKA on {st.test.name} test ({device_text(st.device)})"
        on_progress(stage, 0, None)
        rep = analyze_blocks(plain, st.test, num_examples=req.examples, on_batch=lambda d, n: on_progress(stage, d, n),
                             device=st.device)
        found = [asdict(b) | {"size": b.size} for b in rep.blocks]
        return found, {"source": "detected here (hubcompare blocks' defaults, test split)", "criteria": rep.params,
                       "layers": rep.pcs.layers}

    def _summary(self, result) -> dict:
        """Headline numbers for lists and page headers."""
        common = {"ref": result.ref, "num_blocks": len(result.blocks)}
        if self.name == "probes":
            rows = result.layers
            best = max(rows, key=lambda r: r["test_accuracy"])
            return common | {"layers": len(rows), "pooling": result.settings["pooling"],
                             "model_test_accuracy": result.model_test_accuracy, "last_layer": rows[-1]["name"],
                             "last_layer_test_accuracy": rows[-1]["test_accuracy"], "best_layer": best["name"],
                             "best_test_accuracy": best["test_accuracy"],
                             "train_examples": result.settings["train"]["num_examples"],
                             "test_examples": result.settings["test"]["num_examples"]}
        stages = [{"stage": st["stage"], "deletable": st["deletable"],
                   "accuracy_all_deleted": st["steps"][-1]["accuracy"], "drop_all_deleted": st["steps"][-1]["drop"]}
                  for st in result.stages]
        return common | {"full_accuracy": result.full_accuracy, "num_examples": result.settings["num_examples"],
                         "stages": stages, "max_drop": max((s["drop"] for s in result.rows()), default=0.0)}

    def export(self, stored: StoredResult, req: ComparisonRequest, out: Path) -> list[Path]:
        written = [copy_file(stored.file(f), out / f) for f in self.files]
        if req.fmt == "png":
            return written + [copy_file(stored.file(f"{self.stem}.png"), out / f"{self.stem}.png")]
        d = json.loads(stored.file(self.files[0]).read_text())
        if self.name == "probes":
            return written + [plot_probes(probe_result_from_json(d), out / f"{self.stem}.{req.fmt}")]
        return written + [plot_deletion(deletion_result_from_json(d), out / f"{self.stem}.{req.fmt}")]


def probe_result_from_json(d: dict) -> ProbeResult:
    """A :class:`ProbeResult` from its ``to_json`` (``probes.json``)."""
    return ProbeResult(d["ref"], d["layers"], d["stage_boundaries"], d["model_test_accuracy"], d["model"], d["settings"],
                       d["detected_blocks"])


def deletion_result_from_json(d: dict) -> DeletionResult:
    """A :class:`DeletionResult` from its ``to_json`` (``deletion.json``)."""
    return DeletionResult(d["ref"], d["full_accuracy"], d["stages"], d["model"], d["settings"], d["detected_blocks"])


def _probed_layers(m: CompareModel, train: ImageDataset) -> list[str]:
    """The layers probe_layers taps in ``m`` (its patterns; hubcompare ResNets: stem, branches, outputs, pool)."""
    patterns = m.layers
    if patterns is None and hasattr(m.model, "forward_taps"):
        patterns = list(DEFAULT_PROBE_LAYERS)
    spec = InputSpec.from_model(m.model, train.image_shape)
    return LayerCapture(m.model, patterns, example=spec(train.images[:2]), name=m.ref).names


_BLOCKS = FileOption(name="blocks", doc="the blocks to shade: auto (detected), none, or a blocks JSON on this machine",
                     choices=("auto", "none"))


def _files(stem: str) -> dict:
    return {"document": f"{stem}.json", "table": f"{stem}.csv", "figure": f"{stem}.{{fmt}}"}


def _form_probes(form: Mapping[str, str], data: dict) -> dict:
    """The form's probes train on as many training examples as they are tested on."""
    return {"train_examples": data["examples"]} if data.get("examples") is not None else {}


PROBES = _ProbeKind(KindSpec(
    name="probes", summary="a linear probe's test accuracy at every layer of one model (with its blocks shaded)",
    refs=(1, 1), sized=True, fixed={"split": "test", "passes": 1, "labels": None},
    fixed_why="fits on the training split and reports on the test split, in one pass", files=_files("probes"),
    form_options=_form_probes,
    options=(BoolOption(name="pool", doc="average-pool each layer's features over space first"),
             NumbersOption(name="l2", doc="the L2 penalties tried (chosen on the validation share)", low=1e-12, high=1e12,
                           max_len=32),
             FloatOption(name="validation_fraction", doc="the training share held out to choose the L2 penalty", low=0.0,
                         high=1.0, open=True),
             IntOption(name="train_examples", doc="training examples the probes fit on", low=2, high=MAX_EXAMPLES,
                       server_cap="examples", server_required=True),
             IntOption(name="max_iter", doc="the optimiser's iterations per probe", low=1, high=100_000),
             FloatOption(name="memory_gb", doc="features held at once", low=1e-12, high=1e6, in_key=False),
             _BLOCKS)), "probes")
DELETE_BLOCKS = _ProbeKind(KindSpec(
    name="delete-blocks", summary="one model's test accuracy as residual blocks are deleted, inside vs outside its blocks",
    refs=(1, 1), sized=True, layers=False, fixed={"split": "test", "layers": None, "passes": 1, "seed": 0, "labels": None},
    fixed_why="evaluates the model's own head on the test split", files=_files("deletion"), options=(_BLOCKS,)), "deletion")
KINDS = (PROBES, DELETE_BLOCKS)
