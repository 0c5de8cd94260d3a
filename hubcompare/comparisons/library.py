"""The Python API (``from hubcompare import compare``): a comparison in a notebook, made as the CLI makes it.

:func:`compare` chooses the batch plan with the CLI's function (:func:`~..similarity.batchplan.choose_batch_plan`:
the paper's 256, or smaller for at least 8 minibatches a pass), labels the models by their cards' names (or
``labels``), and returns the CLI's warnings (the plan's, a model fed data unlike its training data, ...): the same
pass as ``hubcompare cross-cka`` (``cka`` for one model), through the same code (:mod:`.cka_kinds`). With ``store``
(a :class:`~..results.store.ResultStore`, or True for the CLI's own store) it goes through
:func:`.run.run_request`, so a stored result answers at once and a computed one is stored under the key the CLI
uses (``hubcompare results list`` shows it, and the CLI's same request answers from it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..data.datasets import ImageDataset
from ..errors import InvalidRequestError
from ..hub.references import resolve_reference
from ..models.checkpoint import DEFAULT_MAX_PARAMS
from ..models.devices import resolve_device
from ..results.store import ResultStore
from ..similarity.batchplan import BatchPlan
from ..similarity.engine import CompareModel, Comparison, comparison_dataset
from ..similarity.measures import Measure, parse_measures
from ..similarity.results import CKAResult
from .cka_kinds import (
    batch_plan_from_json,
    cka_result_from_json,
    finish_pair,
    labels_for,
    pass_state,
    plan_warnings,
    run_pass,
)
from .measure_kinds import MEASURES_FILE
from .requests import ComparisonRequest
from .run import Outcome, run_request

__all__ = ["Compared", "compare"]


@dataclass
class Compared:
    """Every pair of one comparison: ``pair(i, j)`` is a :class:`CKAResult` of model i's layers (rows) against model
    j's, named by ``labels``, its provenance holding the ``batch_plan``. ``warnings``: what the CLI prints for it.
    ``outcome``: the stored result (``key``, ``from_store``) when made with ``store``, else None (and ``comparison``,
    the engine's :class:`Comparison`, every pair within a model too)."""

    labels: list[str]
    batch_plan: BatchPlan
    warnings: list[str]
    settings: dict
    comparison: Comparison | None = None
    outcome: Outcome | None = None
    _pairs: dict[tuple[int, int], CKAResult] = field(default_factory=dict, repr=False)
    _measures: dict | None = field(default=None, repr=False)  # a stored compare result's measures.json

    @property
    def key(self) -> str | None:
        """The result's key in the store (None without ``store``)."""
        return self.outcome.key if self.outcome is not None else None

    @property
    def from_store(self) -> bool:
        """Whether the store answered (nothing was computed)."""
        return self.outcome is not None and self.outcome.from_store

    def measure(self, name: str, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Measure ``name``'s (or key's, ``rbf-cka(frac=0.5)``) value and SE, model i's layers (rows) by model j's."""
        if self._measures is not None:
            return _stored_measure(self._measures, name, i, j)
        if self.comparison is None:
            raise InvalidRequestError("a stored cross-cka keeps linear CKA only: ask for the measures (measures=[...]) to "
                                      "store them", "measures", params=("measures",))
        keys = [k for k, m in self.comparison.measure_specs.items() if name in (k, m.name)]
        if not keys:
            raise InvalidRequestError(f"{name!r} was not computed in this comparison (it has "
                                      f"{', '.join(self.comparison.measures)}): ask for it in the measures", "measures",
                                      params=("measures",))
        return self.comparison.measure_pair(keys[0], i, j)

    def pair(self, i: int, j: int) -> CKAResult:
        if (i, j) not in self._pairs:
            n = len(self.labels)
            if not (0 <= i < n and 0 <= j < n):
                raise IndexError(f"pair ({i}, {j}): this comparison has {n} model{'s' if n != 1 else ''} (0 to {n - 1})")
            if self._measures is not None:
                raise InvalidRequestError(f"pair ({i}, {j}): a stored compare result holds its measures: read them with "
                                          "measure(name, i, j) (CKA too, when it was asked for)", "measures")
            if self.comparison is None:
                stored = ", ".join(f"({a}, {b})" for a, b in self._pairs)
                raise InvalidRequestError(f"pair ({i}, {j}) is not in the stored result (it holds {stored}): a stored "
                                          "cross-cka keeps the pairs across models; compare without store= for the "
                                          "pairs within one", "store")
            self._pairs[i, j] = finish_pair(self.comparison.pair(i, j), self.batch_plan, self.labels[i], self.labels[j])
        return self._pairs[i, j]


def compare(models: Sequence[str | CompareModel], dataset: str | ImageDataset | None = None, *, split: str = "test",
            data_dir: str | Path | None = None, layers: Sequence[str] | None = None, batch_size: int | None = None,
            passes: int = 1, seed: int = 0, examples: int | None = None, labels: Sequence[str | None] | None = None,
            device: Any = "auto", store: ResultStore | bool | None = None, recompute: bool = False,
            trust_pulled: bool | None = None, max_params: int = DEFAULT_MAX_PARAMS,
            on_progress: Callable[[str, int, int | None], None] | None = None,
            measures: Sequence[str | Measure] = ("cka",)) -> Compared:
    """CKA between every layer pair of ``models`` (references as on the command line, or :class:`CompareModel`\\ s) on
    ``dataset`` (a name, an :class:`ImageDataset`, or None: the models' training dataset), ``split``, as
    ``hubcompare cross-cka`` computes it: ``batch_size`` None chooses the CLI's plan, ``labels`` None names the models
    by their cards. ``store``: a :class:`ResultStore` or True (``$HUBCOMPARE_HOME``'s, the CLI's) to look the result
    up and store it (the models as references, the dataset by name); ``recompute``, ``trust_pulled`` as the CLI's
    ``--recompute``/``--trust-pulled``. ``on_progress(stage, done, total)``: live progress. ``measures``: names (or
    measure objects with parameters, :mod:`..similarity.measures`) computed in the same pass, read with
    ``Compared.measure(name, i, j)``; with ``store``, measures other than CKA are stored as ``hubcompare compare`` stores
    them (the measures and their parameters in the key; read them with ``measure``, not ``pair``)."""
    chosen = [m if isinstance(m, Measure) else parse_measures([m])[0] for m in measures]
    models = list(models)
    refs = tuple(m if isinstance(m, str) else m.ref for m in models)
    named = dataset if isinstance(dataset, str) or dataset is None else None
    req = ComparisonRequest("cka" if len(refs) == 1 else "cross-cka", refs, named, split,
                            tuple(layers) if layers else None, batch_size, passes, seed, examples,
                            labels=tuple(labels) if labels else None)
    progress = on_progress or (lambda stage, done, total: None)
    if store is not None and store is not False:
        if isinstance(dataset, ImageDataset):
            raise InvalidRequestError("dataset: a stored result names its dataset; give its name (e.g. 'digits'), or "
                                      "compare without store=", "dataset", params=("dataset",))
        kwargs = dict(recompute=recompute, trust_pulled=trust_pulled, data_dir=data_dir, max_params=max_params, device=device,
                      on_progress=progress)
        target = ResultStore() if store is True else store
        if [m.key for m in chosen] != ["cka"] and len(refs) > 1:  # other measures: the compare kind (they are in its key)
            return _stored_measures(replace(req, kind="compare", options={"measures": [m.key for m in chosen]}), target,
                                    **kwargs)
        return _stored(req, target, **kwargs)
    built = [CompareModel.from_resolved(resolve_reference(m, max_params=max_params), req.layers, ref=m)
             if isinstance(m, str) else (CompareModel(m.ref, m.model, m.provenance, list(req.layers)) if req.layers else m)
             for m in models]
    dev = resolve_device(device)
    ds = dataset if isinstance(dataset, ImageDataset) else comparison_dataset(built, named, split, data_dir)
    st = pass_state(built, req, ds, dev)
    comp = run_pass(req, st, progress, None, measures=chosen)
    settings = {k: v for k, v in comp.settings.items()} | {"batch_plan": st.plan.to_json()}
    return Compared(st.names, st.plan, list(dict.fromkeys(comp.warnings + plan_warnings(st.plan))), settings, comp)


def _stored_measures(req: ComparisonRequest, store: ResultStore, **kwargs) -> Compared:
    """``req`` (a compare) through :func:`run_request`; its measures read back from the stored ``measures.json``."""
    outcome = run_request(req, store=store, **kwargs)
    stored = outcome.stored
    doc = json.loads(stored.file(MEASURES_FILE).read_text())
    names = labels_for(stored, req)
    settings = dict(doc["settings"])
    return Compared(names, batch_plan_from_json(stored.summary["batch_plan"]), list(dict.fromkeys(outcome.warnings)),
                    settings, None, outcome, _measures=doc)


def _stored_measure(doc: dict, name: str, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Measure ``name`` (or its key) between models i and j from a stored ``measures.json`` (rows: model i)."""
    n = len(doc["models"])
    if not (0 <= i < n and 0 <= j < n) or i == j:
        raise IndexError(f"pair ({i}, {j}): a stored compare result holds the pairs of its {n} models across models "
                         f"(0 to {n - 1}, i != j)")
    pair = next(p for p in doc["pairs"] if {p["index_a"], p["index_b"]} == {i, j})
    entry = next((e for key, e in pair["measures"].items() if name in (key, e["key"])), None)
    if entry is None:
        raise InvalidRequestError(f"{name!r} is not in this stored result (it has {', '.join(doc['measure_keys'])}): ask "
                                  "for it in the measures", "measures", params=("measures",))
    value, se = (np.array([[np.nan if v is None else v for v in row] for row in entry[k]], dtype=float)
                 for k in ("value", "se"))
    if pair["index_a"] == i:
        return value, se
    if not entry.get("symmetric", True):
        raise InvalidRequestError(f"{entry['key']} is asymmetric and the stored result holds model {pair['index_a']}'s "
                                  f"layers (rows) against model {pair['index_b']}'s: ask for ({pair['index_a']}, "
                                  f"{pair['index_b']})", "measures", params=("measures",))
    return value.T.copy(), se.T.copy()


def _stored(req: ComparisonRequest, store: ResultStore, **kwargs) -> Compared:
    """``req`` through :func:`run_request` (the CLI's store and key), its pairs read back from the stored JSON under
    ``req``'s labels."""
    outcome = run_request(req, store=store, **kwargs)
    stored = outcome.stored
    names = labels_for(stored, req)
    pairs = {}
    for p in stored.summary["pairs"]:
        r = cka_result_from_json(json.loads(stored.file(f"{p['stem']}.json").read_text()))
        r.label_a, r.label_b = names[p["a"]], names[p["b"]]
        pairs[p["a"], p["b"]] = r
    first = next(iter(pairs.values()))
    settings = {k: v for k, v in first.provenance.items() if k != "models"}
    return Compared(names, batch_plan_from_json(stored.summary["batch_plan"]), list(dict.fromkeys(outcome.warnings)),
                    settings, None, outcome, pairs)
