"""compare (several similarity measures in one pass) as a stored comparison: prepare, compute, export.

Its key holds what a cross-cka key holds (:func:`.cka_kinds.prepare_pass`: each model's identity, the dataset's
name, split and fingerprint, the tapped layers, the batch plan, passes, seed, examples, hubcompare's version) and
the measures with their parameters, as keys in the order asked (``rsa``, ``rbf-cka(frac=0.5)``). Its files:
``measures.json`` (every pair: each measure's value and SE matrices, layers, orientation, range, parameters, what
it derives) and one figure per pair (``measures.png`` for two models, ``measures-A-vs-B.png`` for more). Labels and
the figure format are presentation: on export the JSON is relabelled and the figures drawn again from it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..provenance import atomic_write_json
from ..results.store import StoredResult
from ..similarity.engine import Comparison
from ..similarity.labels import file_slugs
from ..errors import MeasureError, short_repr
from ..similarity.measures import Measure, measure_from_key, measure_names
from ..similarity.plots import plot_measures
from .cka_kinds import copy_file, labels_for, model_records, plan_warnings, prepare_pass, run_pass
from .kindspec import MAX_MODELS, Heatmaps, KindSpec, Option, Prepared, bad_field

if TYPE_CHECKING:  # annotations only: requests.py reads the kinds' specs
    from .requests import ComparisonRequest

__all__ = ["COMPARE", "KINDS", "MAX_MEASURES", "MEASURES_FILE", "MeasuresOption", "chosen_measures", "form_measures",
           "measure_values", "optional_measures"]

MEASURES_FILE = "measures.json"
DEFAULT_MEASURES = ("cka",)
MAX_MEASURES = 16  # measures in one pass
MAX_KEY_CHARS = 100


@dataclass(frozen=True, kw_only=True)
class MeasuresOption(Option):
    """A list of measure keys (``rsa``, ``rbf-cka(frac=0.5)``), each a known measure with parameters in range, none
    twice."""

    max_len: int

    def check(self, where: str, v: Any) -> None:
        if not isinstance(v, (list, tuple)) or not 0 < len(v) <= self.max_len or not all(isinstance(k, str) for k in v):
            raise bad_field(where, f"{short_repr(v)} is not a list of 1 to {self.max_len} measure names",
                            f"give measures such as ['rsa', 'rbf-cka(frac=0.5)'] ({', '.join(measure_names())})")
        keys = []
        for i, text in enumerate(v):
            if not text.strip() or len(text) > MAX_KEY_CHARS:
                raise bad_field(f"{where}[{i}]", f"{short_repr(text)} is empty or over {MAX_KEY_CHARS} characters",
                                "give a measure's name, with parameters in parentheses if any")
            try:
                keys.append(measure_from_key(text).key)
            except MeasureError as e:
                raise bad_field(f"{where}[{i}]", str(e), "see `hubcompare measures` (api/measures) for names and ranges") from None
        if len(set(keys)) != len(keys):
            raise bad_field(where, f"{short_repr(v)} names a measure twice", "name each measure (with its parameters) once")

    def schema(self) -> dict:
        return {"type": "array", "minItems": 1, "maxItems": self.max_len, "description": self.doc,
                "items": {"type": "string", "description": f"a measure key: {', '.join(measure_names())}, e.g. rbf-cka(frac=0.5)"}}

    def hostile(self) -> list:
        return super().hostile() + [[], ["no-such-measure"], ["rbf-cka(frac=-1)"], ["cka", "cka"], ["cka"] * (self.max_len + 1)]

    def example(self) -> list:
        return list(DEFAULT_MEASURES)


def form_measures(form: Mapping[str, str]) -> list[str]:
    """The compare form's measures field: keys separated by commas outside parentheses."""
    return [m.strip() for m in re.split(r",(?![^(]*\))", form.get("measures") or "") if m.strip()]


def _form_options(form: Mapping[str, str], data: dict) -> dict:
    return {"measures": form_measures(form) or list(DEFAULT_MEASURES)}


def optional_measures(form: Mapping[str, str], data: dict) -> dict:
    """The form options of a kind whose measures are extra (across-seeds, grounding): none unless the field lists some."""
    measures = form_measures(form)
    return {"measures": measures} if measures else {}


def chosen_measures(req: ComparisonRequest) -> list[Measure]:
    """The measures ``req`` asks for (``options.measures``: keys; default linear CKA), parameters checked."""
    return [measure_from_key(k) for k in req.options.get("measures") or DEFAULT_MEASURES]


def _matrix(a) -> list:
    return [[float(v) if math.isfinite(float(v)) else None for v in row] for row in np.asarray(a)]


def _array(rows: list) -> np.ndarray:
    return np.array([[np.nan if x is None else x for x in row] for row in rows], dtype=float)


def measure_values(comp: Comparison, m: Measure, i: int, j: int) -> dict:
    """One measure between model i's layers (rows) and model j's, as ``measures.json`` holds it."""
    value, se = comp.measure_pair(m.key, i, j)
    entry = {"key": m.key, "value": _matrix(value), "se": _matrix(se), "layers_a": comp.captures[i].names,
             "layers_b": comp.captures[j].names, "orientation": m.orientation, "range": list(m.value_range),
             "params": dict(m.values), "symmetric": m.symmetric}
    rows = slice(comp.offsets[i], comp.offsets[i + 1])
    cols = slice(comp.offsets[j], comp.offsets[j + 1])
    for name, extra in m.derived(comp.measures[m.key].value).items():
        entry[name] = _matrix(extra.numpy()[rows, cols])
    return entry


def _stem(i: int, j: int, slugs: list[str], n: int) -> str:
    return f"measures-{slugs[i]}-vs-{slugs[j]}" if n > 2 else "measures"


def _caption(settings: dict) -> str:
    d = settings.get("dataset") or {}
    batches = settings.get("num_batches") or 0
    return (f"{d.get('name', '?')} {d.get('split', '')}, {settings.get('num_examples')} examples, batch "
            f"{settings.get('batch_size')}, {batches} minibatch{'es' if batches != 1 else ''}")


def _figure(pair: dict, doc: dict, path: Path) -> Path:
    first = next(iter(pair["measures"].values()))
    panels = [{"title": e["key"], "value": _array(e["value"]), "range": e["range"], "orientation": e["orientation"]}
              for e in pair["measures"].values()]
    return plot_measures(panels, first["layers_a"], first["layers_b"], pair["label_a"], pair["label_b"],
                         _caption(doc["settings"]), path)


def _mean(rows: list) -> float | None:
    v = _array(rows)
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


class _CompareKind:
    """Every chosen measure between every layer pair of every pair of models, from one pass (each model runs once per
    minibatch), with jackknife SEs."""

    spec = KindSpec(
        name="compare", summary="several similarity measures between every layer of two or more models, in one pass",
        refs=(2, MAX_MODELS), estimator=True, sized=True,
        options=(MeasuresOption(name="measures", doc="the measures' keys (default: cka)", max_len=MAX_MEASURES),),
        files={"document": MEASURES_FILE, "figure": "measures*.{fmt}"}, heatmaps=Heatmaps(per_measure=True),
        form_options=_form_options)
    name = spec.name

    def prepare(self, req: ComparisonRequest, ctx) -> Prepared:
        prepared = prepare_pass(req, ctx)
        chosen = chosen_measures(req)
        prepared.key_inputs["options"] = {"measures": [m.key for m in chosen]}
        prepared.title = f"compare ({', '.join(m.key for m in chosen)}): " + " vs ".join(prepared.state.names)
        return prepared

    def compute(self, req: ComparisonRequest, prepared: Prepared, staging: Path, on_progress, compare):
        st = prepared.state
        chosen = chosen_measures(req)
        # the document reports model pairs only: no measure is spent on a model's layers against its own
        comp = run_pass(req, st, on_progress, compare, measures=tuple(chosen), measure_pairs="across")
        warnings = list(dict.fromkeys(comp.warnings + plan_warnings(st.plan)))
        settings = dict(comp.settings) | {"batch_plan": st.plan.to_json()}
        n, slugs = len(st.models), file_slugs(st.names)
        pairs = []
        for i in range(n):
            for j in range(i + 1, n):
                pairs.append({"a": req.refs[i], "b": req.refs[j], "label_a": st.names[i], "label_b": st.names[j],
                              "index_a": i, "index_b": j, "stem": _stem(i, j, slugs, n),
                              "measures": {m.name: measure_values(comp, m, i, j) for m in chosen}})
        doc = {"command": "compare", "models": [{"ref": r, "label": name} for r, name in zip(req.refs, st.names)],
               "measure_keys": [m.key for m in chosen], "pairs": pairs, "warnings": warnings, "settings": settings}
        atomic_write_json(staging / MEASURES_FILE, doc)
        for pair in pairs:
            _figure(pair, doc, staging / f"{pair['stem']}.png")
        summary = {"models": model_records(st.models, st.names), "batch_plan": st.plan.to_json(),
                   "dataset": st.dataset.describe(), "measures": [m.key for m in chosen],
                   "pairs": [{"a": p["index_a"], "b": p["index_b"], "stem": p["stem"],
                              "means": {e["key"]: _mean(e["value"]) for e in p["measures"].values()}} for p in pairs]}
        return summary, warnings

    def export(self, stored: StoredResult, req: ComparisonRequest, out: Path) -> list[Path]:
        """``measures.json`` first, then each pair's figure, under ``req``'s labels and format."""
        names = labels_for(stored, req)
        doc = json.loads(stored.file(MEASURES_FILE).read_text())
        old = [m["label"] for m in doc["models"]]
        slugs, n = file_slugs(names), len(names)
        if names == old:
            written = [copy_file(stored.file(MEASURES_FILE), out / MEASURES_FILE)]
        else:
            for m, name in zip(doc["models"], names):
                m["label"] = name
            for p in doc["pairs"]:
                i, j = p["index_a"], p["index_b"]
                p["label_a"], p["label_b"], p["stem"] = names[i], names[j], _stem(i, j, slugs, n)
            written = [atomic_write_json(out / MEASURES_FILE, doc)]
        for p, src in zip(doc["pairs"], stored.summary["pairs"]):
            if names == old and req.fmt == "png":
                written.append(copy_file(stored.file(f"{src['stem']}.png"), out / f"{p['stem']}.png"))
            else:
                written.append(_figure(p, doc, out / f"{p['stem']}.{req.fmt}"))
        return written


COMPARE = _CompareKind()
KINDS = (COMPARE,)
