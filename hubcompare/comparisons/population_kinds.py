"""Agreement and class-diff as stored comparisons: what names their numbers, computing them, handing them out.

A population comparison's numbers depend only on each side's members' predictions (in order: the
random splits index them), the examples (ids, labels, class names) and the options; so the key
hashes each member's pinned reference, commit, recorded weights hash and a sha256 of its predicted
classes, the dataset as the predictions record it, the options and the package version. Labels and
the figure format are presentation: a stored result asked for under other labels is the same result,
its JSON relabelled and its figure drawn again from the arrays kept beside it (``*_figure.npz``,
numbers only, never pickles), so nothing is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.datasets import load_dataset
from ..populations import stats
from ..populations.agreement import AgreementResult, agreement
from ..populations.classdiff import MIN_MODELS, ClassDiffResult, class_diff
from ..populations.plots import plot_agreement, plot_class_diff
from ..populations.sides import check_aligned, load_side
from ..provenance import atomic_write_bytes, atomic_write_json, package_versions
from ..results.store import StoredResult
from ..similarity.labels import default_label, unique_labels
from .kindspec import ChoiceOption, FloatOption, IntOption, KindSpec, Prepared

if TYPE_CHECKING:  # annotations only: requests.py reads the kinds' specs
    from .requests import ComparisonRequest

__all__ = ["AGREEMENT", "CLASS_DIFF", "DEFAULTS", "KINDS", "PopulationKind", "labels_for", "options_of", "side_labels"]

# Member.to_json's own keys: what is left of a stored member is its model's metadata (depth, width, seed, ...)
_MEMBER_KEYS = ("ref", "resolved", "commit_sha", "registry_name", "path", "predictions", "weights_sha256", "accuracy",
                "predictions_device")


# --- labels (presentation: never in the key) ---------------------------------------------------
def side_labels(specs: tuple[str, str], members: tuple[list[tuple[dict, str]], list[tuple[dict, str]]],
                given: tuple[str | None, str | None]) -> list[str]:
    """What tables, figures and the JSON call each side: ``given`` where set, else the side's models' shared card name
    (``ResNet-20 (1x)``, with what tells the sides apart added) when that names them apart, else the side string.
    ``members``: per side, each model's (metadata, reference)."""
    labels = [g or spec for g, spec in zip(given, specs)]
    infos, names = [], []
    for side in members:
        per_model = [default_label(info, ref) for info, ref in side]
        first = side[0][0]
        shared = {k: v for k, v in first.items() if all(info.get(k) == v for info, _ in side)}
        infos.append(shared)
        names.append(per_model[0] if len(set(per_model)) == 1 and "depth" in shared else None)
    if None in names:
        return labels
    named = unique_labels(infos, list(specs), list(given))
    if named[0] != named[1]:
        for i, (label, g) in enumerate(zip(named, given)):
            if not g and not label.endswith("]") and " #" not in label:  # else the side string says it better
                labels[i] = label
    return labels


def _given(req: ComparisonRequest) -> tuple[str | None, str | None]:
    labels = tuple(req.labels or ())
    return tuple((labels[i] if i < len(labels) and labels[i] else None) for i in range(2))  # type: ignore[return-value]


def labels_for(stored: StoredResult, req: ComparisonRequest) -> list[str]:
    """The labels a fresh run of ``req`` gives the stored result's sides (``req.labels``, else the card names), from
    the members' metadata its JSON records."""
    kind = AGREEMENT if stored.kind == "agreement" else CLASS_DIFF
    return _labels_from(req, json.loads(stored.file(kind.files[0]).read_text())["provenance"])


def _labels_from(req: ComparisonRequest, provenance: dict) -> list[str]:
    members = tuple([({k: v for k, v in m.items() if k not in _MEMBER_KEYS}, m["ref"]) for m in provenance[side]["models"]]
                    for side in ("side_a", "side_b"))
    return side_labels(tuple(req.refs), members, _given(req))


# --- the key ---------------------------------------------------------------------------------
def _sha256(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _side_key(side) -> list[dict]:
    """Each member, in order (the splits index them): which model, and a hash of the predicted classes compared."""
    pred = side.predicted.astype("<i4")
    return [{"resolved": m.resolved, "commit_sha": m.commit_sha, "weights_sha256": m.weights_sha256,
             "predictions_sha256": _sha256(pred[i])} for i, m in enumerate(side.members)]


def _dataset_key(side) -> dict:
    d = side.dataset
    ids = json.dumps(list(side.ids)).encode("utf-8")
    return {"name": d.get("name"), "split": d.get("split"), "fingerprint": d.get("fingerprint"),
            "num_examples": len(side.ids), "classes": list(side.classes),
            "ids_labels_sha256": _sha256(np.frombuffer(hashlib.sha256(ids).digest(), np.uint8), side.labels.astype("<i8"))}


# --- options (declared in each kind's spec below; the defaults filled in here) -----
DEFAULTS = {"agreement": {"splits": 1000, "permutations": 1000, "null_side": "auto"},
            "class-diff": {"splits": 1000, "alpha": 0.05, "null_side": "auto"}}


def options_of(req: ComparisonRequest) -> dict:
    """Every option of ``req``'s kind, the defaults where it does not say: what changes the numbers besides the sides."""
    out = DEFAULTS[req.kind] | dict(req.options)
    if "alpha" in out:
        out["alpha"] = float(out["alpha"])
    return out


# --- the figures' arrays, kept beside the JSON so a figure can be drawn again under other labels ---
def _save_npz(path: Path, arrays: dict) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())


def _load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _agreement_arrays(r: AgreementResult) -> dict:
    a = {"acc_a": r.acc_a, "acc_b": r.acc_b, "model_accuracy_a": r.model_accuracy_a, "model_accuracy_b": r.model_accuracy_b}
    if r.permutation is not None:
        a["permutation_null"] = r.permutation.null
    if r.null is not None:
        a |= {"band_lo": r.null["band_lo"], "band_hi": r.null["band_hi"], "example_a": r.null["example_a"],
              "example_b": r.null["example_b"]}
    return a


def _agreement_from(doc: dict, arrays: dict) -> AgreementResult:
    """An AgreementResult good for drawing its figure, from its stored JSON and arrays."""
    s = doc["summary"]
    perm = null = None
    if "permutation_test" in s:
        pt = s["permutation_test"]
        perm = stats.PermutationTest(pt["observed"], arrays["permutation_null"], pt["p_value"])
    if "null" in s:
        n = s["null"]
        null = {"side": n["side"], "splits": n["splits"], "half_size": n["half_size"], "z_band": n["z_band"],
                "band_lo": arrays["band_lo"], "band_hi": arrays["band_hi"], "example_a": arrays["example_a"],
                "example_b": arrays["example_b"], "expected_outside": n["expected_outside_under_null"],
                "outside_test": n["outside_band_test"], "too_small": n["too_small"]}
    n_examples = arrays["acc_a"].size
    return AgreementResult(doc["side_a"], doc["side_b"], [""] * n_examples, np.zeros(n_examples, np.int64), arrays["acc_a"],
                           arrays["acc_b"], arrays["model_accuracy_a"], arrays["model_accuracy_b"], s["kappa"], s["agreement"],
                           perm, null, s.get("pair"), provenance=doc["provenance"], warnings=doc["warnings"])


def _class_diff_arrays(r: ClassDiffResult) -> dict:
    w = r.welch
    a = {"class_acc_a": r.class_acc_a, "class_acc_b": r.class_acc_b, "q": r.q,
         **{f"welch_{k}": getattr(w, k) for k in ("mean_a", "mean_b", "diff", "se", "t", "df", "p", "ci_lo", "ci_hi")}}
    if r.null is not None:
        ex = r.null["example"]
        a |= {"band_lo": r.null["band_lo"], "band_hi": r.null["band_hi"], "example_diff": ex["diff"],
              "example_ci_lo": ex["ci_lo"], "example_ci_hi": ex["ci_hi"], "example_q": ex["q"]}
    return a


def _class_diff_from(doc: dict, arrays: dict) -> ClassDiffResult:
    """A ClassDiffResult good for drawing its figure, from its stored JSON and arrays."""
    s = doc["summary"]
    w = stats.Welch(**{k: arrays[f"welch_{k}"] for k in ("mean_a", "mean_b", "diff", "se", "t", "df", "p", "ci_lo", "ci_hi")})
    null = None
    if "null" in s:
        n = s["null"]
        null = {"side": n["side"], "splits": n["splits"], "half_size": n["half_size"], "band_lo": arrays["band_lo"],
                "band_hi": arrays["band_hi"], "too_small": n["too_small"],
                "example": {"diff": arrays["example_diff"], "ci_lo": arrays["example_ci_lo"], "ci_hi": arrays["example_ci_hi"],
                            "q": arrays["example_q"]}}
    classes = doc["provenance"]["classes"]
    return ClassDiffResult(doc["side_a"], doc["side_b"], classes, arrays["class_acc_a"], arrays["class_acc_b"], w, arrays["q"],
                           s["alpha"], null, provenance=doc["provenance"], warnings=doc["warnings"])


# --- relabelling a stored JSON -----------------------------------------------------------------
def _relabel(doc: dict, old: list[str], new: list[str], null_from: str | None) -> dict:
    """``doc`` (agreement.json / class_diff.json) with the sides called ``new``: the side names, the provenance's
    labels, the null's side and the warnings (by name, where the old labels tell the sides apart)."""
    if old == new:
        return doc
    doc = json.loads(json.dumps(doc))
    doc["side_a"], doc["side_b"] = new
    prov = doc["provenance"]
    prov["side_a"]["label"], prov["side_b"]["label"] = new
    if null_from in ("a", "b"):
        label = new[0 if null_from == "a" else 1]
        if isinstance(doc["summary"].get("null"), dict):
            doc["summary"]["null"]["side"] = label
        prov.get("settings", {})["null_from"] = label
    if old[0] != old[1] and all(old):
        table = dict(zip(old, new))
        pattern = sorted(table, key=len, reverse=True)

        def swap(text: str) -> str:
            out, i = [], 0
            while i < len(text):
                hit = next((p for p in pattern if text.startswith(p, i)), None)
                out.append(table[hit] if hit else text[i])
                i += len(hit) if hit else 1
            return "".join(out)

        doc["warnings"] = [swap(w) for w in doc["warnings"]]
    return doc


@dataclass(frozen=True)
class PopulationKind:
    """One of the two population comparisons, as a kind ``run_request`` runs and ``export`` hands out."""

    spec: KindSpec
    stem: str  # agreement | class_diff: the files' base name
    need: int  # models the null's side needs (the null_side_for threshold)

    @property
    def name(self) -> str:  # agreement | class-diff
        return self.spec.name

    @property
    def files(self) -> tuple[str, str, str]:
        """The stored JSON, CSV and the arrays its figure is drawn from."""
        return f"{self.stem}.json", f"{self.stem}.csv", f"{self.stem}_figure.npz"

    def title(self, labels: list[str], num_models: tuple[int, int]) -> str:
        return " ".join(f"{self.name}: {labels[0]} ({_models(num_models[0])}) vs {labels[1]} ({_models(num_models[1])})".split())

    # -- prepare: load both sides (predictions from the checkpoints or the cache), build the key inputs
    def prepare(self, req: ComparisonRequest, ctx) -> Prepared:
        options = options_of(req)
        ds = load_dataset(req.dataset, req.split, ctx.data_dir) if req.dataset else None
        sides = []
        for i, spec in enumerate(req.refs):
            label = _given(req)[i] or spec

            def on_member(j, n, ref, label=label):
                ctx.on_progress(f"loading {label}: {j + 1}/{n} {ref}", j, n)

            sides.append(load_side(spec, label, dataset=ds, data_dir=ctx.data_dir, registry=ctx.registry, api=ctx.api,
                                   cache_dir=ctx.cache_dir, max_params=ctx.max_params, device=ctx.device, on_member=on_member))
        sa, sb = sides
        check_aligned(sa, sb)  # before the key: sides about other examples are refused, never stored
        labels = side_labels(tuple(req.refs), tuple([(m.info, m.ref) for m in s.members] for s in sides), _given(req))
        sa.label, sb.label = labels
        key_inputs = {
            "sides": {"a": _side_key(sa), "b": _side_key(sb)},
            "dataset": _dataset_key(sa),
            "settings": {**options, "seed": req.seed, "dataset_option": req.dataset},
            "hubcompare": package_versions().get("hubcompare"),
        }
        aliases = [r for s in sides for m in s.members for r in (m.ref, m.resolved)]  # as named, and pinned
        return Prepared(key_inputs=key_inputs, title=self.title(labels, (sa.num_models, sb.num_models)),
                        models=list(dict.fromkeys(aliases)), dataset=str(sa.dataset.get("name")),
                        notices=[], state={"sides": sides, "options": options})

    # -- compute: the same files the CLI has always written, plus the figure's arrays
    def compute(self, req: ComparisonRequest, prepared: Prepared, staging: Path, on_progress=None, compare=None):
        sa, sb = prepared.state["sides"]
        opts = prepared.state["options"]
        if on_progress:
            on_progress("computing", 0, None)
        settings = {"dataset_option": req.dataset}
        if self.name == "agreement":
            r = agreement(sa, sb, splits=opts["splits"], permutations=opts["permutations"], seed=req.seed,
                          null_side=opts["null_side"], settings=settings)
            arrays, plot = _agreement_arrays(r), plot_agreement
        else:
            r = class_diff(sa, sb, alpha=opts["alpha"], splits=opts["splits"], seed=req.seed, null_side=opts["null_side"],
                           settings=settings)
            arrays, plot = _class_diff_arrays(r), plot_class_diff
        name = sa.dataset.get("name")  # a model whose card names another dataset: said, as the CKA kinds say it
        r.warnings += [f"{m.ref}: trained on {m.info['dataset']}, compared on {name}: its predictions are on data unlike "
                       "its training data." for s in (sa, sb) for m in s.members if m.info.get("dataset") not in (None, name)]
        r.save(staging)
        _save_npz(staging / self.files[2], arrays)
        plot(r, staging / f"{self.stem}.png")
        null_from = None if r.null is None else ("a" if _null_is_a(self.need, sa.num_models, opts["null_side"]) else "b")
        return self._summary(r.to_json(), null_from), list(r.warnings)

    def _summary(self, doc: dict, null_from: str | None) -> dict:
        """Small JSON for lists and page headers: the headline numbers, the labels the files carry."""
        s = doc["summary"]
        out = {"labels": [doc["side_a"], doc["side_b"]], "models": s["models"], "null_from": null_from}
        if self.name == "agreement":
            out |= {"num_examples": s["num_examples"], "mean_accuracy": s["mean_accuracy"],
                    "kappa_across": s["kappa"]["across"]["mean"], "agreement_across": s["agreement"]["across"],
                    "permutation_p": s.get("permutation_test", {}).get("p_value"),
                    "outside_band": s.get("null", {}).get("outside_band"),
                    "outside_band_p": s.get("null", {}).get("outside_band_p_value"),
                    "mcnemar_p": (s.get("pair") or {}).get("mcnemar", {}).get("p_value")}
        else:
            out |= {"classes": s["classes"], "alpha": s["alpha"], "significant_q": s["significant_q"],
                    "significant_classes": [row["class"] for row in doc["classes"] if row["significant"]]}
        return out

    # -- export: to --out, the file names a fresh run writes; the figure drawn again when labels or format differ
    def document(self, stored: StoredResult, req: ComparisonRequest) -> dict:
        """The stored JSON (agreement.json / class_diff.json) as a fresh run of ``req`` writes it: under its labels."""
        doc = json.loads(stored.file(self.files[0]).read_text())
        old = [doc["side_a"], doc["side_b"]]
        return _relabel(doc, old, _labels_from(req, doc["provenance"]), stored.summary.get("null_from"))

    def export(self, stored: StoredResult, req: ComparisonRequest, out_dir: Path) -> list[Path]:
        out_dir = Path(out_dir)
        doc = self.document(stored, req)
        relabelled = [doc["side_a"], doc["side_b"]] != stored.summary.get("labels")
        written = [atomic_write_json(out_dir / self.files[0], doc) if relabelled else _copy(stored.file(self.files[0]), out_dir),
                   _copy(stored.file(self.files[1]), out_dir)]
        figure = out_dir / f"{self.stem}.{req.fmt}"
        if relabelled or req.fmt != "png":
            arrays = _load_npz(stored.file(self.files[2]))
            result = _agreement_from(doc, arrays) if self.name == "agreement" else _class_diff_from(doc, arrays)
            written.append((plot_agreement if self.name == "agreement" else plot_class_diff)(result, figure))
        else:
            written.append(_copy(stored.file(f"{self.stem}.png"), out_dir))
        return written


def _models(n: int) -> str:
    return f"{n} model{'' if n == 1 else 's'}"


def _null_is_a(need: int, models_a: int, choice: str) -> bool:
    """Whether the null came from side A (populations.nulls.null_side_for's choice, on side sizes)."""
    return choice == "a" or (choice == "auto" and models_a >= need)


def _copy(src: Path, out_dir: Path) -> Path:
    return atomic_write_bytes(out_dir / src.name, src.read_bytes())


MAX_SPLITS = 10_000  # splits and permutations on the service
_FIXED = {"split": "test", "layers": None, "batch_size": None, "passes": 1, "examples": None}
_WHY = "compares stored predictions on the test split"
_SPLITS = IntOption(name="splits", doc="random halvings of each side (the null's spread)", low=1, high=100_000,
                    server_cap=MAX_SPLITS)
_NULL_SIDE = ChoiceOption(name="null_side", doc="the side whose halves make the null (auto: the larger)",
                          choices=("a", "b", "auto"))


def _files(stem: str) -> dict:
    return {"document": f"{stem}.json", "table": f"{stem}.csv", "figure": f"{stem}.{{fmt}}",
            "figure_arrays": f"{stem}_figure.npz"}


AGREEMENT = PopulationKind(KindSpec(
    name="agreement", summary="per-example prediction agreement between two sides, against a null from within a side",
    refs=(2, 2), sides=True, layers=False, fixed=_FIXED, fixed_why=_WHY, files=_files("agreement"),
    options=(_SPLITS, IntOption(name="permutations", doc="label permutations of the test", low=1, high=100_000,
                                server_cap=MAX_SPLITS), _NULL_SIDE)), "agreement", need=2)
CLASS_DIFF = PopulationKind(KindSpec(
    name="class-diff", summary="per-class accuracy differences between two sides (Welch tests, FDR-controlled)",
    refs=(2, 2), sides=True, layers=False, fixed=_FIXED, fixed_why=_WHY, files=_files("class_diff"), tables=("classes",),
    options=(FloatOption(name="alpha", doc="the false discovery rate", low=1e-6, high=0.5), _SPLITS, _NULL_SIDE)),
    "class_diff", need=2 * MIN_MODELS)  # MIN_MODELS per half
KINDS = (AGREEMENT, CLASS_DIFF)
