"""Grounding: which similarity measure to trust, scored on the user's own population of seeds.

:func:`ground` runs every chosen measure over every layer pair of every model of a population (at least
:data:`MIN_SEEDS` seeds of one architecture) and, optionally, of a control population trained on shuffled labels
(``hubcompare train --shuffle-labels 1``), in one pass of the engine, and scores each measure on the tests of
Ding, Denain & Steinhardt (NeurIPS 2021) and the ReSi benchmark (Klabunde et al., ICLR 2025), as
:mod:`.scores` defines them:

- specificity: a layer of one seed is most similar to the same layer of another seed;
- layer order: within a model, similarity falls with the distance in layers;
- top-pc removal: removing a layer's top principal components lowers the measure in step with a linear probe's
  accuracy (:mod:`.pcs`, on the first model);
- low-pc removal: the same, removing the low-variance end (keeping the top half, quarter, ... of the
  components): the change Ding et al. found CKA blind to;
- function: across pairs of models, the measure at the last compared layer tracks how often their predictions agree;
- control (with a control side): real models are more similar to each other than to the control models.

With the default batch (every example in one batch) each value is the measure's exact full-data value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.datasets import ImageDataset
from ..errors import ComparisonTooLargeError, OverlappingSidesError, SideArchitectureError, TooFewModelsError
from ..hub.references import resolve_reference
from ..models.checkpoint import DEFAULT_MAX_PARAMS
from ..models.devices import resolve_device
from ..models.predictions import predict
from ..populations.seeds import DEFAULT_MAX_BYTES, pass_bytes
from ..populations.sides import expand_side
from ..provenance import package_versions
from ..similarity.blocks import DEFAULT_BLOCK_LAYERS
from ..similarity.engine import CompareModel, ComparisonPass, compare, comparison_dataset
from ..similarity.measures import Measure, parse_measures
from ..similarity.settings import PassSettings
from . import scores
from .defaults import DEFAULT_EXAMPLES, MIN_SEEDS, TESTS
from .pcs import PCRemoval, layer_features, pc_removal

__all__ = ["DEFAULT_EXAMPLES", "MIN_SEEDS", "Grounding", "ground"]



@dataclass
class Grounding:
    """The measure x test scores of one population (and control), with what they were computed from."""

    measures: list[dict]  # each measure's describe()
    scores: list[scores.Score]
    layers: list[str]
    real: list[dict]  # each model's reference and provenance
    control: list[dict]
    pairs: list[dict]  # per model pair: kind (real / mixed / control), agreement, each measure at the last layer
    pc: list[PCRemoval]
    settings: dict
    warnings: list[str] = field(default_factory=list)

    @property
    def tests(self) -> list[str]:
        """The tests scored (control only with a control side), in table order."""
        done = {s.test for s in self.scores}
        return [t for t in TESTS if t in done]

    def score(self, measure: str, test: str) -> scores.Score:
        """The score of ``measure`` (its key or name) on ``test``."""
        for s in self.scores:
            if s.test == test and measure in (s.measure, s.measure.split("(")[0]):
                return s
        raise KeyError(f"no score of {measure!r} on {test!r}")

    def rows(self) -> list[dict]:
        """One row per measure: each test's score and whether it passed, and the number of tests passed."""
        out = []
        for m in self.measures:
            row = {"measure": m["key"], "orientation": m["orientation"], "passed": 0, "tests": {}}
            for t in self.tests:
                s = self.score(m["key"], t)
                row["tests"][t] = s.to_json()
                row["passed"] += s.passed
            out.append(row)
        return out

    def markdown(self) -> str:
        """The measure x test table as Markdown: score (pass/fail), a header row of chance levels and rules."""
        tests = self.tests
        lines = ["| measure | " + " | ".join(tests) + " | passed |", "|---|" + "---|" * (len(tests) + 1)]
        for row in self.rows():
            cells = []
            for t in tests:
                s = row["tests"][t]
                cells.append("n/a" if s["score"] is None else f"{s['score']:.2f} {'pass' if s['passed'] else 'FAIL'}")
            lines.append(f"| {row['measure']} | " + " | ".join(cells) + f" | {row['passed']} / {len(tests)} |")
        first = self.scores[0] if self.scores else None
        chance = {t: self.score(first.measure, t).chance for t in tests} if first else {}
        lines.append("| chance | " + " | ".join(f"{chance[t]:.2f}" for t in tests) + " | |")
        lines.append("")
        lines += [f"- {t}: pass when {scores.RULES[t][2]}" for t in tests]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {"command": "grounding", "tests": self.tests, "rules": {t: scores.RULES[t][2] for t in self.tests},
                "table": self.rows(), "measures": self.measures, "layers": self.layers, "real": self.real,
                "control": self.control, "pairs": self.pairs, "pc_removal": [p.to_json() for p in self.pc],
                "settings": self.settings, "warnings": self.warnings}

    @classmethod
    def from_json(cls, d: dict) -> Grounding:
        """A result back from its ``to_json`` (``grounding.json``): what a stored result's figure is drawn again from."""
        def num(v) -> float:
            return float("nan") if v is None else float(v)

        found = [scores.Score(t["test"], t["measure"], num(t["score"]), float(t["chance"]), int(t["count"]))
                 for row in d["table"] for t in row["tests"].values()]
        pc = [PCRemoval(r["layer"], r["end"], list(r["removed"]), list(r["kept"]), [num(a) for a in r["accuracy"]],
                        {k: [num(v) for v in vals] for k, vals in r["values"].items()}) for r in d["pc_removal"]]
        return cls(list(d["measures"]), found, list(d["layers"]), list(d["real"]), list(d["control"]), list(d["pairs"]), pc,
                   dict(d["settings"]), list(d["warnings"]))


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _pc_layers(names: list[str], count: int) -> list[str]:
    """``count`` layers evenly spaced over ``names`` (all when there are fewer)."""
    if count >= len(names):
        return list(names)
    return [names[int(round(i))] for i in np.linspace(0, len(names) - 1, count)]


def _with_default_layers(m: CompareModel) -> CompareModel:
    """hubcompare ResNets: stem + every block output (the head's logits would make the function test circular)."""
    if m.layers is None and hasattr(m.model, "forward_taps"):
        return CompareModel(m.ref, m.model, m.provenance, list(DEFAULT_BLOCK_LAYERS))
    return m


def _check_models(real: list[str], control: list[str], spec: str) -> None:
    if len(real) < MIN_SEEDS:
        raise TooFewModelsError(
            f"{spec} names {len(real)} model{'s' if len(real) != 1 else ''}; grounding needs at least {MIN_SEEDS} seeds "
            "of one architecture (specificity and the function test compare seeds with each other): train more seeds "
            "(hubcompare grid with a seed axis) or name more models.", params=("real",))
    both = sorted(set(real) & set(control))
    if both:
        raise OverlappingSidesError(f"{both[0]} is on both sides: the control side holds other models (e.g. trained "
                                    "with shuffled labels); list each model once.", params=("control",))


@dataclass
class Population:
    """The models a grounding run compares: the real seeds' references, the control's, and every model loaded (real
    first), with the side specs as given."""

    real: str
    control: str | None
    real_refs: list[str]
    control_refs: list[str]
    models: list[CompareModel]
    resolved: list[Any]  # each model's ResolvedModel (its identity for a result key)


def load_population(real: str, control: str | None = None, *, layers: Sequence[str] | None = None, registry=None,
                    api=None, max_params: int = DEFAULT_MAX_PARAMS,
                    on_progress: Callable[[str, int, int | None], None] | None = None) -> Population:
    """Expand the sides (as ``agreement`` takes them), check their sizes, and load every model (the cheap part)."""
    progress = on_progress or (lambda stage, done, total: None)
    real_refs = expand_side(real, registry, api)
    control_refs = expand_side(control, registry, api) if control else []
    _check_models(real_refs, control_refs, real)
    refs = real_refs + control_refs
    models, resolved = [], []
    for i, ref in enumerate(refs):
        progress(f"loading {ref}", i, len(refs))
        r = resolve_reference(ref, registry, api, max_params=max_params)
        resolved.append(r)
        models.append(_with_default_layers(CompareModel.from_resolved(r, layers, ref=ref)))
    return Population(real, control, real_refs, control_refs, models, resolved)


def ground(real: str | Population, control: str | None = None, *, dataset: str | ImageDataset | None = None,
           data_dir: Any = None, measures: Sequence[str | Measure] = ("all",), layers: Sequence[str] | None = None,
           examples: int = DEFAULT_EXAMPLES, batch_size: int | None = None, pc_steps: int = 10, pc_layers: int = 5,
           seed: int = 0, device: Any = "auto", registry=None, api=None, max_params: int = DEFAULT_MAX_PARAMS,
           max_bytes: int = DEFAULT_MAX_BYTES,
           on_progress: Callable[[str, int, int | None], None] | None = None) -> Grounding:
    """Score every measure in ``measures`` on the grounding tests (module doc) for the population ``real`` (a side,
    as ``agreement`` takes it) and, when given, the control population ``control``, on the first ``examples``
    examples of ``dataset``'s test split (default: the models' training dataset). ``batch_size`` None: every example
    in one batch (exact values). ``pc_layers`` layers of the first model, evenly spaced, lose their top 0..``pc_steps``
    principal components for the pc-removal test, and all but the top r / 2^j (j = 0..``pc_steps``) for the
    low-variance one. ``real`` may be a :class:`Population` already loaded (``control`` and the loading options are
    then its own)."""
    progress = on_progress or (lambda stage, done, total: None)
    chosen = [m if isinstance(m, Measure) else parse_measures([m])[0] for m in measures] if measures else parse_measures(["all"])
    keys = list(dict.fromkeys(m.key for m in chosen))
    chosen = [next(m for m in chosen if m.key == k) for k in keys]
    pop = real if isinstance(real, Population) else load_population(
        real, control, layers=layers, registry=registry, api=api, max_params=max_params, on_progress=on_progress)
    real, control, real_refs, control_refs, models = pop.real, pop.control, pop.real_refs, pop.control_refs, pop.models
    refs = real_refs + control_refs
    dev = resolve_device(device)
    ds = dataset if isinstance(dataset, ImageDataset) else comparison_dataset(models, dataset, "test", data_dir)
    n = min(examples, len(ds))
    settings = PassSettings(batch_size=batch_size or n, num_examples=n, measures=tuple(chosen), device=dev, seed=seed)
    with ComparisonPass(models, ds, settings) as run:  # checks the settings and finds every model's layers
        names, num_batches, bs = run.layer_names, len(run.plan), run.batch_size
    for ref, got in zip(refs[1:], names[1:]):
        if got != names[0]:
            raise SideArchitectureError(
                f"{refs[0]} has {len(names[0])} compared layers ({names[0][0]} .. {names[0][-1]}) and {ref} {len(got)} "
                f"({got[0]} .. {got[-1]}): grounding compares seeds layer by layer, so every model (control too) must "
                "be one architecture; name such models, or choose layers they all have.", params=("layers",))
    need = pass_bytes(sum(map(len, names)), bs, num_batches)
    need_total = need["total"] + need["grams_per_batch"] * (1 if len(chosen) > 1 else 0)  # the measures' own Grams
    if need_total > max_bytes:
        raise ComparisonTooLargeError(
            f"{len(models)} models x {len(names[0])} layers at {bs} examples a batch would hold ~{need_total / 2**30:.1f} "
            f"GiB, over the limit of {max_bytes / 2**30:.1f} GiB: use fewer examples or a smaller batch size, fewer "
            "layers, or raise max_bytes on a larger machine.", params=("examples", "batch_size", "layers", "max_bytes"))
    stage = f"measures ({len(models)} models, {n} examples, {dev.type})"
    comp = compare(models, ds, settings, on_batch=lambda done, total: progress(stage, done, total))
    subset = ds.subset(torch.arange(n))
    predicted = []
    for i, m in enumerate(models):
        progress("predictions", i, len(models))
        predicted.append(predict(m.model, subset, device=dev).predicted.numpy())
    progress("predictions", len(models), len(models))

    probed = _pc_layers(names[0], pc_layers)
    feats = layer_features(models[0], ds, probed, n, dev)
    removal = pc_removal(feats, subset.labels, ds.num_classes, chosen, pc_steps, seed,
                         on_step=lambda done, total: progress("pc removal", done, total))

    L, offsets = len(names[0]), comp.offsets
    last = L - 1
    real_idx = range(len(real_refs))
    pair_list = [(i, j) for i in range(len(refs)) for j in range(i + 1, len(refs))]
    kind = {p: "real" if p[1] < len(real_refs) else ("control" if p[0] >= len(real_refs) else "mixed") for p in pair_list}
    agreement = np.array([float((predicted[i] == predicted[j]).mean()) for i, j in pair_list])
    result, pair_values = [], {p: {} for p in pair_list}
    for m in chosen:
        s = scores.as_similarity(comp.measures[m.key].value.numpy(), m.orientation)

        def block(i: int, j: int) -> np.ndarray:
            return s[offsets[i] : offsets[i] + L, offsets[j] : offsets[j] + L]

        result.append(scores.specificity(m.key, [block(i, j) for i in real_idx for j in real_idx if i != j]))
        result.append(scores.layer_order(m.key, [block(i, i) for i in real_idx]))
        for end, test in (("top", "top-pc removal"), ("low", "low-pc removal")):
            ladder = [r for r in removal if r.end == end]
            result.append(scores.pc_removal(m.key, [scores.as_similarity(np.array(r.values[m.key]), m.orientation)
                                                    for r in ladder], [np.array(r.accuracy) for r in ladder], test))
        at_last = np.array([(block(i, j)[last, last] + block(j, i)[last, last]) / 2 for i, j in pair_list])
        for p, v in zip(pair_list, at_last):
            pair_values[p][m.key] = _finite(float(v))
        result.append(scores.function(m.key, at_last, agreement))
        if control_refs:
            matched = {p: float(np.nanmean((np.diag(block(*p)) + np.diag(block(p[1], p[0]))) / 2))
                       if np.isfinite(np.diag(block(*p))).any() else float("nan") for p in pair_list}
            result.append(scores.control(m.key, np.array([matched[p] for p in pair_list if kind[p] == "real"]),
                                         np.array([matched[p] for p in pair_list if kind[p] == "mixed"])))
    warnings = list(comp.warnings)
    if not control_refs:
        warnings.append("no control side: the control test is not scored, and the function test sees only pairs of "
                        "real seeds, whose agreement varies little (train a control population with "
                        "`hubcompare train --shuffle-labels 1` and name it as the second side)")
    elif len(control_refs) < 2:
        warnings.append(f"the control side has {len(control_refs)} model: the control test's AUC rests on "
                        f"{len(real_refs)} mixed pairs; 2 or more control models make it steadier")
    for m in chosen:
        bad = comp.measures[m.key].undefined
        if bad:
            warnings.append(f"{m.key} is undefined on {len(bad)} of the {comp.offsets[-1]} layers compared (NaN there): "
                            "those layers are left out of its scores")
    models_json = [{"ref": m.ref, **{k: v for k, v in m.provenance.items() if k in ("resolved", "commit_sha", "architecture",
                   "model_args", "dataset", "seed", "test_accuracy", "recipe_hash", "weights_sha256")}} for m in models]
    return Grounding(
        measures=[m.describe() for m in chosen],
        scores=result,
        layers=names[0],
        real=models_json[: len(real_refs)],
        control=models_json[len(real_refs) :],
        pairs=[{"a": refs[i], "b": refs[j], "kind": kind[i, j], "agreement": float(a), "last_layer": names[0][last],
                "values": pair_values[i, j]} for (i, j), a in zip(pair_list, agreement)],
        pc=removal,
        settings={"real": real, "control": control, "dataset": {"name": ds.name, "split": ds.split,
                                                                 "fingerprint": ds.fingerprint, "size": len(ds)},
                  "num_examples": n, "batch_size": bs, "num_batches": num_batches, "seed": seed,
                  "layers": list(layers) if layers else None, "pc_layers": probed, "pc_steps": pc_steps,
                  "probe": {"kind": "ridge classifier (closed form)", "ridge": "1e-3 x mean squared feature norm",
                            "split": "seeded half fit, half test"},
                  "device": str(dev), "hubcompare": package_versions().get("hubcompare"),
                  "pass": {k: v for k, v in comp.settings.items() if k not in ("models",)}},
        warnings=warnings,
    )
