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
from dataclasses import dataclass, field
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
        if self.comparison is None:
            raise InvalidRequestError("a stored result keeps linear CKA only: compare without the store for other measures",
                                      "measures", params=("measures",))
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
    ``Compared.measure(name, i, j)``; the store keeps linear CKA only (for now), so other measures need ``store`` None."""
    chosen = [m if isinstance(m, Measure) else parse_measures([m])[0] for m in measures]
    models = list(models)
    refs = tuple(m if isinstance(m, str) else m.ref for m in models)
    named = dataset if isinstance(dataset, str) or dataset is None else None
    req = ComparisonRequest("cka" if len(refs) == 1 else "cross-cka", refs, named, split,
                            tuple(layers) if layers else None, batch_size, passes, seed, examples,
                            labels=tuple(labels) if labels else None)
    progress = on_progress or (lambda stage, done, total: None)
    if store is not None and store is not False:
        if any(m.name != "cka" for m in chosen):
            raise InvalidRequestError("measures: the result store keeps linear CKA only so far; compare without the store "
                                      "for other measures", "measures", params=("measures",))
        if isinstance(dataset, ImageDataset):
            raise InvalidRequestError("dataset: a stored result names its dataset; give its name (e.g. 'digits'), or "
                                      "compare without store=", "dataset", params=("dataset",))
        return _stored(req, ResultStore() if store is True else store, recompute=recompute, trust_pulled=trust_pulled,
                       data_dir=data_dir, max_params=max_params, device=device, on_progress=progress)
    built = [CompareModel.from_resolved(resolve_reference(m, max_params=max_params), req.layers, ref=m)
             if isinstance(m, str) else (CompareModel(m.ref, m.model, m.provenance, list(req.layers)) if req.layers else m)
             for m in models]
    dev = resolve_device(device)
    ds = dataset if isinstance(dataset, ImageDataset) else comparison_dataset(built, named, split, data_dir)
    st = pass_state(built, req, ds, dev)
    comp = run_pass(req, st, progress, None, measures=chosen)
    settings = {k: v for k, v in comp.settings.items()} | {"batch_plan": st.plan.to_json()}
    return Compared(st.names, st.plan, list(dict.fromkeys(comp.warnings + plan_warnings(st.plan))), settings, comp)


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
