"""CLI commands comparing two models or populations example by example: agreement, class-diff (Typer + rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..models.checkpoint import DEFAULT_MAX_PARAMS
from .options import (
    seed_range,
    DataDir,
    Device,
    FigureFormat,
    MaxParams,
    finite,
    one_of,
    progress_console,
    slug,
    warn,
    writable_folder,
    wrote,
)
from .output import Json, plural, print_json, table
from .stored import Recompute, TrustPulled, default_out, run_stored, stored_json

SideArg = Annotated[str, typer.Argument(
    help="A model, REF1+REF2+..., @FILE, population:NAME, registry:KEY=VALUE,..., hf-tag:TAG or collection:SLUG.")]
Dataset = Annotated[str | None, typer.Option("--dataset", help="Compare on this dataset's test split, recomputing (and caching) "
                                                "predictions of models whose stored ones are about other data. Default: the stored predictions.")]
Splits = Annotated[int, typer.Option("--splits", min=1, help="Random splits of one population into two disjoint halves (the null).")]
Seed = Annotated[int, typer.Option("--seed", min=0, callback=seed_range, help="Seed of the random splits and permutations (recorded in the result).")]
NullSide = Annotated[str, typer.Option("--null-side", callback=one_of("a", "b", "auto"), help="Population the split-half null comes from: a, b, or auto (A if large enough, else B).")]
LabelOpt = Annotated[str | None, typer.Option(
    help="Name of the side in tables, figures and the JSON (default: its models' card name, e.g. 'ResNet-20 (1x)', when "
         "they share one and the other side's differs; else the side string).")]
Out = Annotated[Path | None, typer.Option("--out", callback=writable_folder, help="Folder for the PNG/JSON/CSV outputs (default: results/<command>-<A>-vs-<B>-<KEY8>, KEY8 the result key's first 8 hex digits: another request never overwrites it).")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Where computed predictions are cached (default: $HUBCOMPARE_HOME/predictions).")]


def _run(kind: str, a: str, b: str, options: dict, seed: int, dataset, label_a, label_b, fmt: str, out, recompute: bool,
         data_dir, cache_dir, max_params: int, device: str, json_out: bool, con, trust_pulled: bool = False):
    """The stored result of the comparison, or a fresh one (stored); written to ``--out`` as a fresh run writes it.
    Returns its JSON (under this request's labels), the files written and the outcome."""
    from ..comparisons.population_kinds import AGREEMENT, CLASS_DIFF
    from ..comparisons.requests import ComparisonRequest
    from ..comparisons.run import export

    labels = (label_a or None, label_b or None)
    req = ComparisonRequest(kind, (a, b), dataset=dataset, seed=seed, options=options,
                            labels=labels if any(labels) else None, fmt=fmt)
    # the device is where models without stored predictions run; checked before any loading
    outcome = run_stored(req, con, recompute=recompute, data_dir=data_dir, max_params=max_params, device=device,
                         cache_dir=cache_dir, trust_pulled=trust_pulled)
    stored = outcome.stored
    doc = (AGREEMENT if kind == "agreement" else CLASS_DIFF).document(stored, req)
    _sources(con, doc["provenance"])
    warn(doc["warnings"])
    out = out or default_out(f"{kind}-{slug(doc['side_a'])}-vs-{slug(doc['side_b'])}", outcome, req)
    files = export(outcome, req, out)
    if json_out:
        print_json(doc | {"files": [str(f) for f in files], **stored_json(outcome)})
        wrote(files, json_out)
    return doc, files


def _sources(con, provenance: dict) -> None:
    """Per side: how many models, and where their predictions came from (stored in the checkpoint, cache, computed)."""
    for side in (provenance["side_a"], provenance["side_b"]):
        sources: dict[str, int] = {}
        for m in side["models"]:
            sources[m["predictions"]] = sources.get(m["predictions"], 0) + 1
        con.print(f"[bold]{escape(side['label'])}[/]" + (f" ({escape(side['spec'])})" if side["spec"] != side["label"] else "")
                  + f": {plural(side['num_models'], 'model')}, predictions " + ", ".join(f"{v} {k}" for k, v in sources.items()),
                  soft_wrap=True, highlight=False)


def _fmt(v, spec=".4f") -> str:
    return "-" if v is None else format(v, spec)


def _p(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def _sides_line(con, a: str, b: str) -> None:
    """Which side is A and which B, whole (tables then say just A and B, so their columns fit 80 characters)."""
    for k, v in (("A", a), ("B", b)):
        con.print(f"[bold]{k}[/] = {escape(v)}", soft_wrap=True, highlight=False)


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
    recompute: Recompute = False,
    trust_pulled: TrustPulled = False,
    cache_dir: CacheDir = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    fmt: FigureFormat = "png",
    json_out: Json = False,
) -> None:
    """Per-example accuracy of A vs B against a split-half null; error consistency (kappa) and agreement.

    The result is stored under a key of the members' predictions, the data and the options: asked again, it comes
    from the store (--recompute computes it again)."""
    con = progress_console(json_out)
    doc, files = _run("agreement", a, b, {"splits": splits, "permutations": permutations, "null_side": null_side}, seed, dataset,
                      label_a, label_b, fmt, out, recompute, data_dir, cache_dir, max_params, device, json_out, con, trust_pulled)
    if json_out:
        return
    s = doc["summary"]
    _sides_line(con, doc["side_a"], doc["side_b"])
    dataset = doc["provenance"]["dataset"].get("name")
    t = table("", "A", "B", "across", title=f"Agreement on {plural(s['num_examples'], 'example')} of {dataset}")
    t.add_row("models", str(s["models"]["a"]), str(s["models"]["b"]), "")
    t.add_row("mean accuracy", _fmt(s["mean_accuracy"]["a"]), _fmt(s["mean_accuracy"]["b"]), "")
    k = s["kappa"]
    t.add_row("error consistency (kappa), mean over pairs", *(_fmt((k[x] or {}).get("mean")) for x in ("within_a", "within_b", "across")))
    ag = s["agreement"]
    t.add_row("prediction agreement", *(_fmt(ag[x]) for x in ("within_a", "within_b", "across")))
    con.print(t)
    say = lambda text: con.print(text, soft_wrap=True, highlight=False)  # noqa: E731
    say(f"per-example accuracy: mean |A - B| {s['mean_abs_per_example_difference']:.4f}, correlation "
        f"{_fmt(s['per_example_accuracy_correlation'])}")
    pair = s.get("pair")
    if pair is not None:
        mc = pair["mcnemar"]
        say(f"two models: kappa {_fmt(pair['kappa'])}, agreement {pair['agreement']:.4f}; McNemar exact test: "
            f"{mc['a_right_b_wrong']} right only by A, {mc['a_wrong_b_right']} only by B, p = {_p(mc['p_value'])}")
    if "permutation_test" in s:
        pt = s["permutation_test"]
        say(f"permutation test over model labels ({pt['permutations']}): mean squared per-example difference "
            f"{pt['observed']:.5f} vs null mean {pt['null_mean']:.5f}, [bold]p = {_p(pt['p_value'])}[/]")
    if "null" in s:
        n = s["null"]
        say(f"{_null_header(n)}[bold]{n['outside_band']}[/] examples outside the per-example 95% band "
            f"(expected by chance at these side sizes: {n['expected_outside_under_null']:.1f}, "
            f"p = {_p(n['outside_band_p_value'])})")
        _small_null(con, n, "agreement")
    wrote(files)


def _small_null(con, n: dict, kind: str) -> None:
    """Beside the null's line: say plainly when its halves are too small for it to carry weight, and what to read."""
    from ..populations.wording import small_null_note

    note = small_null_note(n, kind)
    if note:
        con.print(f"  [yellow]{escape(note)}[/]", soft_wrap=True, highlight=False)


def _null_header(n: dict) -> str:
    h = plural(n["half_size"], "model")
    return f"split-half null from {escape(n['side'])} ({plural(n['splits'], 'split')}, {h} vs {h}): "


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
    recompute: Recompute = False,
    trust_pulled: TrustPulled = False,
    cache_dir: CacheDir = None,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    device: Device = "auto",
    fmt: FigureFormat = "png",
    json_out: Json = False,
) -> None:
    """Per-class accuracy differences between two populations: Welch's t-test per class, BH q-values, CIs.

    The result is stored under a key of the members' predictions, the data and the options: asked again, it comes
    from the store (--recompute computes it again)."""
    con = progress_console(json_out)
    doc, files = _run("class-diff", a, b, {"alpha": alpha, "splits": splits, "null_side": null_side}, seed, dataset, label_a,
                      label_b, fmt, out, recompute, data_dir, cache_dir, max_params, device, json_out, con, trust_pulled)
    if json_out:
        return
    s = doc["summary"]
    _sides_line(con, doc["side_a"], doc["side_b"])
    t = table(title=f"Welch's t-test per class: {s['models']['a']} vs {plural(s['models']['b'], 'model')}, sorted by p",
              box=None, header_style="bold", pad_edge=False, collapse_padding=True)
    rows = doc["classes"]
    t.add_column("class", overflow="fold", min_width=min(16, max(5, *(len(row["class"]) for row in rows[:top]))))
    for h in ("acc A", "acc B", "A - B", f"{100 * (1 - alpha):g}% CI", "t", "df", "p", "q (BH)", ""):
        t.add_column(h, justify="right", no_wrap=True)
    for row in rows[:top]:
        t.add_row(escape(row["class"]), _fmt(row["mean_a"]), _fmt(row["mean_b"]), _fmt(row["difference"], "+.4f"),
                  "-" if row["ci_lo"] is None else f"[{row['ci_lo']:+.4f}, {row['ci_hi']:+.4f}]",
                  _fmt(row["t"], ".2f"), _fmt(row["df"], ".1f"), _p(row["p"]), _p(row["q"]), "[bold red]*[/]" if row["significant"] else "")
    con.print(t)
    if len(rows) > top:
        con.print(f"({plural(len(rows) - top, 'more class', 'more classes')} in the JSON and CSV; --top shows more)", highlight=False)
    con.print(f"[bold]{s['significant_q']}[/] of {plural(s['classes'], 'class', 'classes')} significant at q < {alpha:g} "
              f"({s['significant_p']} at raw p < {alpha:g})", highlight=False)
    if "null" in s:
        n = s["null"]
        con.print(f"{_null_header(n)}{n['mean_significant_q']:.3f} classes significant per split on average; "
                  f"{100 * n['share_of_splits_with_any_significant']:.1f}% of splits with any", soft_wrap=True, highlight=False)
        _small_null(con, n, "class-diff")
    wrote(files)
