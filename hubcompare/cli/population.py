"""CLI commands comparing two models or populations example by example: agreement, class-diff (Typer + rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .options import (
    SEED_MAX,
    DataDir,
    Device,
    MaxParams,
    console,
    finite,
    one_of,
    pick_device,
    slug,
    warn,
    writable_folder,
    wrote,
)

SideArg = Annotated[str, typer.Argument(
    help="A model, REF1+REF2+..., @FILE, population:NAME, registry:KEY=VALUE,..., hf-tag:TAG or collection:SLUG.")]
Dataset = Annotated[str | None, typer.Option("--dataset", help="Compare on this dataset's test split, recomputing (and caching) "
                                                "predictions of models whose stored ones are about other data. Default: the stored predictions.")]
Splits = Annotated[int, typer.Option("--splits", min=1, help="Random splits of one population into two disjoint halves (the null).")]
Seed = Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="Seed of the random splits and permutations (recorded in the result).")]
NullSide = Annotated[str, typer.Option("--null-side", callback=one_of("a", "b", "auto"), help="Population the split-half null comes from: a, b, or auto (A if large enough, else B).")]
LabelOpt = Annotated[str | None, typer.Option(help="Name of the side in tables and figures (default: the side string).")]
Out = Annotated[Path | None, typer.Option("--out", callback=writable_folder, help="Folder for the PNG/JSON/CSV outputs (default: results/<command>-<A>-vs-<B>).")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Where computed predictions are cached (default: $HUBCOMPARE_HOME/predictions).")]


def _sides(a: str, b: str, label_a, label_b, dataset, data_dir, cache_dir, max_params: int, device: str):
    from ..data.datasets import load_dataset
    from ..populations.sides import load_side

    dev = pick_device(device)  # where models without stored predictions run
    ds = load_dataset(dataset, "test", data_dir) if dataset else None
    sides = []
    for spec, label in ((a, label_a or a), (b, label_b or b)):
        with console.status(f"loading {label}") as status:
            side = load_side(spec, label, dataset=ds, data_dir=data_dir, cache_dir=cache_dir, max_params=max_params, device=dev,
                             on_member=lambda i, n, ref, label=label, status=status: status.update(f"loading {label}: {i + 1}/{n} {ref}"))
        sources = {}
        for m in side.members:
            sources[m.predictions] = sources.get(m.predictions, 0) + 1
        console.print(f"[bold]{label}[/]: {side.num_models} model(s), predictions "
                      + ", ".join(f"{v} {k}" for k, v in sources.items()), soft_wrap=True, highlight=False)
        sides.append(side)
    return sides


def _fmt(v, spec=".4f") -> str:
    return "-" if v is None else format(v, spec)


def _p(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def agreement(
    a: SideArg,
    b: SideArg,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    splits: Splits = 1000,
    permutations: Annotated[int, typer.Option("--permutations", min=1, help="Random relabellings of the pooled models.")] = 1000,
    seed: Seed = 0,
    null_side: NullSide = "auto",
    label_a: LabelOpt = None,
    label_b: LabelOpt = None,
    out: Out = None,
    cache_dir: CacheDir = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
) -> None:
    """Per-example accuracy of A vs B against a split-half null; error consistency (kappa) and agreement."""
    from ..populations.agreement import agreement as compute
    from ..populations.plots import plot_agreement

    sa, sb = _sides(a, b, label_a, label_b, dataset, data_dir, cache_dir, max_params, device)
    with console.status("computing"):
        r = compute(sa, sb, splits=splits, permutations=permutations, seed=seed, null_side=null_side,
                    settings={"dataset_option": dataset})
    warn(r.warnings)
    s = r.summary()
    t = Table("", sa.label, sb.label, "across", title=f"Agreement on {len(r.ids)} examples of {sa.dataset.get('name')}")
    t.add_row("models", str(s["models"]["a"]), str(s["models"]["b"]), "")
    t.add_row("mean accuracy", _fmt(s["mean_accuracy"]["a"]), _fmt(s["mean_accuracy"]["b"]), "")
    k = s["kappa"]
    t.add_row("error consistency (kappa), mean over pairs", *(_fmt((k[x] or {}).get("mean")) for x in ("within_a", "within_b", "across")))
    ag = s["agreement"]
    t.add_row("prediction agreement", *(_fmt(ag[x]) for x in ("within_a", "within_b", "across")))
    console.print(t)
    console.print(f"per-example accuracy: mean |A - B| {s['mean_abs_per_example_difference']:.4f}, correlation "
                  f"{_fmt(s['per_example_accuracy_correlation'])}", highlight=False)
    if r.pair is not None:
        mc = r.pair["mcnemar"]
        console.print(f"two models: kappa {_fmt(r.pair['kappa'])}, agreement {r.pair['agreement']:.4f}; McNemar exact test: "
                      f"{mc['a_right_b_wrong']} right only by A, {mc['a_wrong_b_right']} only by B, p = {_p(mc['p_value'])}", highlight=False)
    if r.permutation is not None:
        pt = s["permutation_test"]
        console.print(f"permutation test over model labels ({pt['permutations']}): mean squared per-example difference "
                      f"{pt['observed']:.5f} vs null mean {pt['null_mean']:.5f}, [bold]p = {_p(pt['p_value'])}[/]", highlight=False)
    if r.null is not None:
        n = s["null"]
        console.print(f"{_null_header(n)}[bold]{n['outside_band']}[/] examples outside the per-example 95% band "
                      f"(the null itself: {n['expected_outside_under_null']:.1f})", highlight=False)
        _small_null(n)
    out = out or Path("results") / f"agreement-{slug(r.label_a)}-vs-{slug(r.label_b)}"
    files = [*r.save(out), plot_agreement(r, out / "agreement.png")]
    wrote(files)


def _small_null(n: dict) -> None:
    """Beside the null's line: say plainly when its halves are too small for it to carry weight."""
    if n["too_small"]:
        console.print(f"  [bold yellow]too few models for this null to carry weight[/]: halves of {n['half_size']} "
                      f"(at least {n['min_half_size']} needed); read the counts above as a sketch, not a finding", highlight=False)


def _null_header(n: dict) -> str:
    return f"split-half null from {n['side']} ({n['splits']} splits, {n['half_size']} vs {n['half_size']} models): "


def class_diff(
    a: SideArg,
    b: SideArg,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    alpha: Annotated[float, typer.Option("--alpha", min=1e-6, max=0.5, callback=finite, help="Significance level for BH q-values (CI level 1 - alpha).")] = 0.05,
    splits: Splits = 1000,
    seed: Seed = 0,
    null_side: NullSide = "auto",
    label_a: LabelOpt = None,
    label_b: LabelOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows of the table to print (all are written).")] = 30,
    out: Out = None,
    cache_dir: CacheDir = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
) -> None:
    """Per-class accuracy differences between two populations: Welch's t-test per class, BH q-values, CIs."""
    from ..populations.classdiff import class_diff as compute
    from ..populations.plots import plot_class_diff

    sa, sb = _sides(a, b, label_a, label_b, dataset, data_dir, cache_dir, max_params, device)
    with console.status("computing"):
        r = compute(sa, sb, alpha=alpha, splits=splits, seed=seed, null_side=null_side, settings={"dataset_option": dataset})
    warn(r.warnings)
    s = r.summary()
    t = Table("class", f"acc {r.label_a}", f"acc {r.label_b}", "A - B", f"{100 * (1 - alpha):g}% CI", "t", "df", "p", "q (BH)", "",
              title=f"Welch's t-test per class: {s['models']['a']} vs {s['models']['b']} models, sorted by p")
    for row in r.rows()[:top]:
        t.add_row(row["class"], _fmt(row["mean_a"]), _fmt(row["mean_b"]), _fmt(row["difference"], "+.4f"),
                  "-" if row["ci_lo"] is None else f"[{row['ci_lo']:+.4f}, {row['ci_hi']:+.4f}]",
                  _fmt(row["t"], ".2f"), _fmt(row["df"], ".1f"), _p(row["p"]), _p(row["q"]), "[bold red]*[/]" if row["significant"] else "")
    console.print(t)
    console.print(f"[bold]{s['significant_q']}[/] of {s['classes']} classes significant at q < {alpha:g} "
                  f"({s['significant_p']} at raw p < {alpha:g})", highlight=False)
    if r.null is not None:
        n = s["null"]
        console.print(f"{_null_header(n)}{n['mean_significant_q']:.3f} classes significant per split on average; "
                      f"{100 * n['share_of_splits_with_any_significant']:.1f}% of splits with any", highlight=False)
        _small_null(n)
    out = out or Path("results") / f"class-diff-{slug(r.label_a)}-vs-{slug(r.label_b)}"
    files = [*r.save(out), plot_class_diff(r, out / "class_diff.png")]
    wrote(files)
