"""The sections a model report carries beyond its card, provenance, CKA and blocks: what a block does, from
:mod:`hubcompare.probes` (linear probes per layer, block-deletion curves), each a :data:`~.page.SectionMaker`.

A model these cannot be run on (a head that does not fit the dataset, no deletable residual block) gets a
section saying why instead of the figure: the rest of the page is still worth sending."""

from __future__ import annotations

from ..data.datasets import load_dataset
from ..errors import ProbeError
from ..probes.deletion import delete_blocks
from ..probes.linear import probe_layers
from ..probes.plots import plot_deletion, plot_probes
from ..probes.summary import accuracy_change, deletion_sentence, probe_fit_text, probe_sentence
from .page import Context, Section, SectionMaker, Table, figure_from

__all__ = ["default_sections", "deletion_section", "probes_section"]

PROBE_TRAIN_EXAMPLES = 2000  # probes on a seeded class-stratified subset of the training split: minutes, not hours


def _steps(ctx: Context, what: str):
    return None if ctx.on_step is None else (lambda done, total: ctx.on_step(done, total, what))


def probes_section(ctx: Context) -> Section:
    """Linear probes on every layer (fit on the training split, L2 chosen on a held-out part, test accuracy shown)."""
    ds = ctx.dataset
    try:
        train = load_dataset(ds.name, "train", ctx.settings.get("data_dir"))
        r = probe_layers(ctx.model, train, ds, seed=ctx.settings.get("seed", 0), train_examples=ctx.settings.get("probe_examples") or PROBE_TRAIN_EXAMPLES,
                         test_examples=ctx.settings.get("num_examples"), on_step=_steps(ctx, "linear probes"),
                         device=ctx.device)
    except ProbeError as e:
        return Section("probes", "Linear probes", text=f"No probes: {e}")
    best = max(r.layers, key=lambda x: x["test_accuracy"])
    own = "" if r.model_test_accuracy is None else f" The model's own head: {r.model_test_accuracy:.4f}."
    return Section(
        "probes", "Linear probes",
        text=(f"A softmax-regression probe per layer on its frozen features, {probe_fit_text(r)}, test accuracy on "
              f"{r.settings['test']['num_examples']} examples. Best: {best['name']} at {best['test_accuracy']:.4f}.{own} "
              + probe_sentence(r, ctx.blocks.blocks)),
        figures=[figure_from(lambda p: plot_probes(r, p, ctx.blocks.blocks), "Linear probes")],
        pre=[("probe accuracy per layer (CSV)", r.to_csv())], provenance=r.settings)


def deletion_section(ctx: Context) -> Section:
    """Test accuracy after deleting residual blocks from the end of each stage (identity path kept, no retraining)."""
    try:
        r = delete_blocks(ctx.model, ctx.dataset, num_examples=ctx.settings.get("num_examples"),
                          on_step=_steps(ctx, "block deletion"), device=ctx.device)
    except ProbeError as e:
        return Section("deletion", "Block deletion", text=f"No deletion curves: {e}")
    rows = [[str(row["stage"]), str(row["deleted"]), row["first_deleted"] or "-",
             accuracy_change(r.full_accuracy, row["accuracy"]) if row["deleted"] else f"{row['accuracy']:.4f}"]
            for row in r.rows()]
    return Section(
        "deletion", "Block deletion",
        text=("Each stage's last residual blocks deleted one by one (the identity path kept, no retraining). "
              + deletion_sentence(r, ctx.blocks.blocks)),
        figures=[figure_from(lambda p: plot_deletion(r, p, ctx.blocks.blocks), "Block deletion")],
        tables=[Table(["stage", "blocks deleted", "first deleted", "test accuracy: full model -> after (change)"], rows)],
        provenance=r.settings)


def default_sections() -> list[SectionMaker]:
    """The sections ``hubcompare report`` adds after the block figure, in page order."""
    return [probes_section, deletion_section]
