"""One model's figures together: a self-contained HTML page to mail or attach to a Hub repo.

The page holds the model card (its metadata fields and its text), the provenance (reference, commit, weights
hash, dataset fingerprint, every setting), the within-model CKA heatmap with the detected blocks, the block
figure, and whatever further sections are plugged in (``sections``: the probes and deletion curves of
:mod:`hubcompare.probes`). Images are embedded as base64 ``data:`` URIs and the styles are inline: the page
loads nothing from anywhere. It is rendered by Jinja2 with autoescaping on, from the template shipped in the
package (``templates/report.html``), so text from a card (which anyone can write) is shown, never run.

A section is a :class:`Section` (title, text, tables, figures as PNG bytes); a :data:`SectionMaker` makes one
from the model, the dataset and the block report computed for the page (:class:`Context`).
"""

from __future__ import annotations

import base64
import json
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import jinja2

from ..data.datasets import ImageDataset
from ..errors import ReportError
from ..models.card import read_card
from ..provenance import atomic_write_text, package_versions, strict_json
from ..similarity.blocks import BlockCriteria, BlockReport, analyze_blocks
from ..similarity.engine import CompareModel, Comparison, compare
from ..similarity.labels import default_label
from ..similarity.plots import plot_block_report, plot_cka

__all__ = ["Context", "Figure", "ModelReport", "Section", "SectionMaker", "build_report", "card_section", "figure_from",
           "render_html", "report_path", "write_report"]

TEMPLATE = "report.html"
REPORT_FILE = "report.html"  # the page's name in an --out folder
HTML_SUFFIXES = (".html", ".htm")
CARD_FIELDS = ("model_name", "license", "library_name", "pipeline_tag", "tags", "datasets", "metrics", "base_model")


@dataclass
class Figure:
    """A PNG shown on the page with its caption (embedded, never linked)."""

    title: str
    png: bytes
    caption: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    title: str = ""


@dataclass
class Section:
    """One part of the page: a title, an optional paragraph, tables, figures and preformatted blocks (``pre``)."""

    key: str
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    pre: list[tuple[str, str]] = field(default_factory=list)  # (summary, text) shown folded
    provenance: dict = field(default_factory=dict)  # the settings behind it, kept with the report's provenance


@dataclass
class Context:
    """What a plugged-in section gets: the model, the dataset compared on, its block report, the settings, and
    ``on_step`` to report progress (``on_step(done, total, what)``)."""

    model: CompareModel
    dataset: ImageDataset
    blocks: BlockReport
    settings: dict
    device: object = "cpu"
    on_step: Callable[[int, int, str], None] | None = None


SectionMaker = Callable[[Context], Section]


@dataclass
class ModelReport:
    ref: str
    title: str
    sections: list[Section]
    provenance: dict
    warnings: list[str] = field(default_factory=list)
    created_at: str = ""


def figure_from(plot: Callable[[Path], Path], title: str, caption: str = "") -> Figure:
    """A figure made by a plotting function that writes a PNG at a path (the library's ``plot_*``), as bytes."""
    with tempfile.TemporaryDirectory(prefix="hubcompare-report-") as tmp:
        path = plot(Path(tmp) / "figure.png")
        return Figure(title, Path(path).read_bytes(), caption)


def _text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_text, value)) or "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def card_section(model: CompareModel) -> Section:
    """The checkpoint's model card: its metadata fields, evaluation results and text (a note when it has none)."""
    folder = model.provenance.get("path")
    card_path = Path(folder) / "README.md" if folder else None
    section = Section("card", "Model card")
    if card_path is None or not card_path.is_file():
        section.text = "This model has no model card (README.md); what its config records is under Provenance."
        return section
    card = read_card(card_path)
    data = card.data.to_dict()
    rows = [[k, _text(data[k])] for k in CARD_FIELDS if data.get(k) not in (None, [], "")]
    for r in card.data.eval_results or []:
        rows.append([f"{r.metric_type} ({r.dataset_name} {r.dataset_split or ''})".strip(), _text(r.metric_value)])
    block = data.get("hubcompare")
    if isinstance(block, dict):
        rows += [[f"hubcompare.{k}", _text(v)] for k, v in block.items()]
    section.tables.append(Table(["field", "value"], rows, f"metadata of {card_path.name}"))
    section.pre.append(("the card's text", card.text.strip()))
    return section


def _provenance_section(comp_prov: dict, extra: dict) -> Section:
    models = comp_prov.get("models", [])
    rows = []
    for m in models:
        for key in ("ref", "resolved", "commit_sha", "path", "architecture", "model_args", "weights_sha256", "recipe_hash",
                    "test_accuracy", "seed"):
            if m.get(key) not in (None, {}, ""):
                rows.append([key, _text(json.dumps(m[key]) if isinstance(m[key], dict) else m[key])])
    d = comp_prov.get("dataset", {})
    rows += [["dataset", f"{d.get('name')} {d.get('split')} ({d.get('num_examples')} examples)"],
             ["dataset fingerprint", _text(d.get("fingerprint"))]]
    for key, name in (("num_examples", "examples compared"), ("batch_size", "batch size"), ("passes", "passes"),
                      ("seed", "shuffle seed"), ("num_batches", "minibatches"), ("estimator", "estimator"),
                      ("standard_error", "standard error")):
        if key in comp_prov:
            rows.append([name, _text(comp_prov[key])])
    dev = comp_prov.get("device") or {}
    rows.append(["device", _text(dev.get("name") or dev.get("type"))])
    rows.append(["backend", _text((comp_prov.get("backend") or {}).get("name"))])
    full = json.dumps(strict_json(comp_prov | extra), indent=2, allow_nan=False)
    return Section("provenance", "Provenance", tables=[Table(["what", "value"], rows)], pre=[("everything, as JSON", full)])


def _outlined(rep: BlockReport) -> str:
    """What the heatmap outlines: the detected blocks, counted, or that there is none."""
    n = len(rep.blocks)
    if not n:
        return "No block was detected, so nothing is outlined."
    return ("The detected block is outlined." if n == 1 else f"The {n} detected blocks are outlined.")


def _cka_sections(rep: BlockReport) -> list[Section]:
    cka = rep.cka
    blocks = Table(["block", "layers", "size", "mean CKA inside", "inside, PC1 removed", "mean CKA to outside", "mean PC1 share"],
                   [[str(k + 1), f"{b.start}-{b.stop}: {b.layers[0]} .. {b.layers[-1]}", str(b.size), f"{b.mean_cka:.3f}",
                     _text(b.mean_cka_pc1_removed), f"{b.outside_cka:.3f}", f"{b.mean_pc1:.3f}"]
                    for k, b in enumerate(rep.blocks)], f"{len(rep.blocks)} block(s): {rep.criteria.describe()}")
    mean_off = cka.mean_off_diagonal_cka
    heat = Section(
        "cka", "Within-model CKA",
        text=(f"Linear CKA (unbiased HSIC, minibatch estimator) between every pair of its {cka.shape[0]} layers; mean CKA "
              f"between distinct layers {_text(mean_off)}, largest jackknife SE {_text(cka.max_se)}. " + _outlined(rep)),
        figures=[figure_from(lambda p: plot_cka(cka, p, rep.blocks), "Within-model CKA")])
    pc1 = rep.pcs.fraction_summary()
    block = Section(
        "blocks", "Block structure",
        text=("A block is a run of layers dominated by their first principal component with high CKA inside "
              f"({rep.criteria.describe()}). " + (f"PC1 share of variance: max {pc1['max']:.3f} at {pc1['max_layer']}, "
                                                  f"median {pc1['median']:.3f} ({rep.pcs.num_examples} examples)." if pc1 else "")),
        tables=[blocks] if rep.blocks else [],
        figures=[figure_from(lambda p: plot_block_report(rep, p), "Block structure",
                             "CKA with blocks outlined; CKA with each layer's PC1 removed; |cosine| of the layers' first PCs; "
                             "PC1 share of variance per layer.")])
    if not rep.blocks:
        block.text += " No block was detected."
    return [heat, block]


def build_report(
    model: CompareModel,
    dataset: ImageDataset,
    batch_size: int = 256,
    passes: int = 1,
    seed: int = 0,
    num_examples: int | None = None,
    pc_examples: int = 1024,
    criteria: BlockCriteria = BlockCriteria(),
    sections: Sequence[SectionMaker] = (),
    on_batch: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, int, str], None] | None = None,
    device="cpu",
    compare_fn: Callable[..., Comparison] = compare,
    batch_plan: dict | None = None,
    data_dir: str | Path | None = None,
    probe_examples: int | None = None,
) -> ModelReport:
    """Compute one model's page: its card, provenance, within-model CKA and blocks (one pass, ``compare_fn``), then
    each of ``sections`` in order. ``batch_plan``: how the batch size was chosen, recorded with the provenance;
    ``data_dir``: where sections find the dataset's other split (probes train on it); ``probe_examples``: how many
    training examples the probes fit on (default: the section's own)."""
    card = card_section(model)
    rep = analyze_blocks(model, dataset, batch_size, passes, seed, num_examples, pc_examples, criteria, on_batch=on_batch,
                         device=device, compare_fn=compare_fn)
    if batch_plan is not None:
        rep.cka.provenance["batch_plan"] = batch_plan
    settings = {"batch_size": batch_size, "passes": passes, "seed": seed, "num_examples": num_examples,
                "pc_examples": pc_examples, "block_criteria": rep.params, "data_dir": None if data_dir is None else str(data_dir),
                "probe_examples": probe_examples}
    ctx = Context(model, dataset, rep, settings, device, on_step)
    extra = []
    for make in sections:
        extra.append(make(ctx))
    meta = model.provenance
    title = default_label(meta, model.ref) + (f", seed {meta['seed']}" if meta.get("seed") is not None else "") + f" ({model.ref})"
    provenance = rep.cka.provenance | {"report": {"sections": {s.key: s.provenance for s in extra}, "package_versions": package_versions()}}
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections_out = [card, _provenance_section(rep.cka.provenance, {"block_detection": rep.params}), *_cka_sections(rep), *extra]
    return ModelReport(model.ref, title, sections_out, provenance, list(rep.cka.warnings), created)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("hubcompare.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_html(report: ModelReport) -> str:
    """The page as one HTML string (autoescaped; images inline)."""
    return _environment().get_template(TEMPLATE).render(report=report)


def report_path(out: str | Path) -> Path:
    """Where ``--out`` puts the page: a path ending in .html (or .htm) is the file itself; anything else is a folder
    (the convention of every other command), the page then being ``report.html`` in it."""
    out = Path(out)
    return out if out.suffix.lower() in HTML_SUFFIXES and not out.is_dir() else out / REPORT_FILE


def write_report(report: ModelReport, path: str | Path) -> Path:
    """Write the page atomically to ``path``: a NAME.html file, or a folder (created if missing) to hold
    ``report.html`` (:func:`report_path`). Returns the file written."""
    file = report_path(path)
    if file.parent.exists() and not file.parent.is_dir():
        raise ReportError(f"{file.parent} is a file, so {file} cannot be written: give a folder or a NAME.html file.",
                          params=("out",))
    file.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(file, render_html(report))
