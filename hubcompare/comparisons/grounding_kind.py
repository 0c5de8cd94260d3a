"""grounding (which similarity measure to trust, scored on a population of seeds) as a stored comparison.

Its key holds every model's identity (reference, commit, sha256 of its weights and config as on disk) on each side
(the real seeds, the control), the dataset's name, split and fingerprint, the layers tapped, the examples, the batch
size, the seed, the measures with their parameters, the pc-removal settings and hubcompare's version. Its files:
``grounding.json`` (the table, every pair, both pc ladders, the models as resolved, every setting), ``grounding.md``
(the table) and the figure, drawn again from the JSON for another ``--format``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..grounding.defaults import DEFAULT_EXAMPLES
from ..grounding.plots import plot_grounding
from ..grounding.run import Grounding, Population, ground, load_population
from ..models.devices import resolve_device
from ..provenance import atomic_write_json, atomic_write_text, package_versions
from ..results.store import StoredResult
from ..similarity.engine import comparison_dataset
from ..similarity.measures import measure_from_key, measure_names
from .cka_kinds import copy_file, device_text, model_identity, tapped_layers
from .kindspec import IntOption, KindSpec, Prepared
from .measure_kinds import MAX_MEASURES, MeasuresOption, optional_measures

if TYPE_CHECKING:  # annotations only: requests.py reads the kinds' specs
    from .requests import ComparisonRequest

__all__ = ["GROUNDING", "KINDS", "caption"]

DEFAULTS = {"pc_steps": 10, "pc_layers": 5}


@dataclass
class GroundingState:
    population: Population
    dataset: Any
    device: Any
    examples: int


def _measures(req: ComparisonRequest) -> list:
    return [measure_from_key(k) for k in (req.options.get("measures") or measure_names())]


def _side(spec: str, models: list[dict]) -> str:
    """A side as a caption names it: as given when short, else its first and last model."""
    return spec if len(spec) <= 40 else f"{models[0]['ref']} .. {models[-1]['ref']}"


def caption(g: Grounding) -> str:
    """What the table and the figure are of: the sides, the dataset and the examples."""
    d, s = g.settings["dataset"], g.settings
    return (f"{len(g.real)} seeds ({_side(s['real'], g.real)})"
            + (f" vs {len(g.control)} control ({_side(s['control'], g.control)})" if s.get("control") else "")
            + f", {d['name']} {d['split']}, {s['num_examples']} examples")


class _GroundingKind:
    """Every chosen measure scored on the grounding tests over a population of seeds (and a control)."""

    spec = KindSpec(
        name="grounding", summary="which similarity measure to trust: sanity tests scored on >= 5 seeds (and a "
                                  "shuffled-label control side)",
        refs=(1, 2), sides=True, estimator=True, sized=True, fixed={"split": "test", "passes": 1, "labels": None},
        fixed_why="scores the test split's first examples in one pass",
        options=(MeasuresOption(name="measures", doc="the measures scored (default: every one)", max_len=MAX_MEASURES),
                 IntOption(name="pc_steps", doc="principal components removed one by one in the pc-removal test", low=1,
                           high=200),
                 IntOption(name="pc_layers", doc="layers of the first model probed in the pc-removal test", low=1,
                           high=100)),
        files={"document": "grounding.json", "table": "grounding.md", "figure": "grounding.{fmt}"},
        form_options=optional_measures)
    name = spec.name

    def prepare(self, req: ComparisonRequest, ctx) -> Prepared:
        dev = resolve_device(ctx.device)  # a device this machine lacks is refused before any model is loaded
        pop = load_population(req.refs[0], req.refs[1] if len(req.refs) > 1 else None, layers=req.layers,
                              registry=ctx.registry, api=ctx.api, max_params=ctx.max_params, on_progress=ctx.on_progress)
        ds = comparison_dataset(pop.models, req.dataset, "test", ctx.data_dir)
        n = min(req.examples or DEFAULT_EXAMPLES, len(ds))
        ids = [model_identity(ref, r) for ref, r in zip(pop.real_refs + pop.control_refs, pop.resolved)]
        options = DEFAULTS | {k: v for k, v in req.options.items() if k != "measures"}
        key_inputs = {
            "sides": {"real": {"spec": pop.real, "models": ids[: len(pop.real_refs)]},
                      "control": {"spec": pop.control, "models": ids[len(pop.real_refs):]}},
            "dataset": {"name": ds.name, "split": ds.split, "fingerprint": ds.fingerprint, "size": len(ds)},
            "layers": [tapped_layers(m, ds) for m in pop.models],
            "settings": {"num_examples": n, "batch_size": req.batch_size or n, "seed": req.seed,
                         "measures": [m.key for m in _measures(req)], **options},
            "hubcompare": package_versions().get("hubcompare"),
        }
        title = (f"grounding: {len(pop.real_refs)} seeds ({req.refs[0]})"
                 + (f" vs {len(pop.control_refs)} control ({req.refs[1]})" if pop.control_refs else ""))
        aliases = [*pop.real_refs, *pop.control_refs, *(str(r.pinned) for r in pop.resolved)]
        notices = [n for r in pop.resolved for n in r.notices]
        return Prepared(key_inputs, title, list(dict.fromkeys(aliases)), ds.name, notices,
                        GroundingState(pop, ds, dev, n))

    def compute(self, req: ComparisonRequest, prepared: Prepared, staging: Path, on_progress, compare=None):
        st: GroundingState = prepared.state
        options = DEFAULTS | req.options
        g = ground(st.population, dataset=st.dataset, measures=_measures(req), layers=req.layers, examples=st.examples,
                   batch_size=req.batch_size, pc_steps=options["pc_steps"], pc_layers=options["pc_layers"],
                   seed=req.seed, device=st.device, on_progress=on_progress)
        text = caption(g)
        atomic_write_json(staging / "grounding.json", g.to_json())
        atomic_write_text(staging / "grounding.md", f"# Grounding: {text}\n\n" + g.markdown())
        plot_grounding(g, staging / "grounding.png", text)
        summary = {"caption": text, "device": device_text(st.device), "tests": g.tests,
                   "passed": {row["measure"]: row["passed"] for row in g.rows()},
                   "dataset": g.settings["dataset"], "models": {"real": len(g.real), "control": len(g.control)}}
        return summary, g.warnings

    def export(self, stored: StoredResult, req: ComparisonRequest, out: Path) -> list[Path]:
        written = [copy_file(stored.file(f), out / f) for f in ("grounding.json", "grounding.md")]
        if req.fmt == "png":
            return written + [copy_file(stored.file("grounding.png"), out / "grounding.png")]
        g = Grounding.from_json(json.loads(stored.file("grounding.json").read_text()))
        return written + [plot_grounding(g, out / f"grounding.{req.fmt}", caption(g))]


GROUNDING = _GroundingKind()
KINDS = (GROUNDING,)
