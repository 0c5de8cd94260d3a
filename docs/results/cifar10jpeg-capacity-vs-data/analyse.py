"""Analyse the capacity-vs-data grid (issue #22) from files a user can check, and (re)write this folder.

    .venv/bin/python docs/results/cifar10jpeg-capacity-vs-data/analyse.py runs/cifar10jpeg-capacity-vs-data \\
        --data-dir ../shared/data/cifar10-jpeg

For every finished run of the population folder (``config.json`` and ``predictions.safetensors`` present):
``hubcompare blocks`` on the full 10,000-image test split into ``blocks/RUN/`` (skipped when that folder was
computed from the same weights, by ``weights_sha256``). Where a model has a block: ``probes`` and ``delete-blocks``
into ``findings/RUN/``, and ``across-seeds`` between the architecture's seeds at that fraction into
``findings/across-seeds-ARCH-fFRACTION/``. Then ``models.json`` (every row's provenance), ``grid.json`` (the
grid's manifest as it stands), ``pc1-vs-fraction.png`` and ``table.md`` (the README's table).

Every command runs niced with one thread, so it can run beside the training grid. ``--no-compute`` only
re-tabulates what is already here.

The population folder need not hold every run: a session's machine keeps only the repository, so runs trained and
analysed in an earlier session may be gone from it. Their rows are kept from this folder (``models.json`` and their
``blocks/RUN/blocks.json``), and ``grid.json`` is merged by run name (a run in the population's manifest replaces
its earlier record; the grid file's axes and exclusions stay those of the whole grid).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
PROVENANCE = ("depth", "width", "seed", "epochs", "data_fraction", "test_accuracy", "train_accuracy", "wall_time_s",
              "recipe_hash", "weights_sha256", "train_data", "test_data", "device", "torch_threads", "created_at")


def _arch(meta: dict) -> str:
    return f"ResNet-{meta['depth']} {meta['width']:g}x"


def _frac(value: float) -> str:
    return str(Fraction(value).limit_denominator(4096))


def _finished(population: Path, pattern: str = "*/config.json") -> list[tuple[Path, dict]]:
    """Every finished checkpoint matching ``pattern`` (the runs, or ``underfit/*/config.json``: the fit rule's kept rungs)."""
    rows = []
    for config in sorted(population.glob(pattern)):
        if (config.parent / "predictions.safetensors").is_file():
            rows.append((config.parent, json.loads(config.read_text())["hubcompare"]))
    return sorted(rows, key=lambda r: (r[1]["depth"], r[1]["width"], r[1]["data_fraction"], r[1]["seed"]))


def _hubcompare(exe: str, args: list[str], log: Path) -> bool:
    """Run one hubcompare command niced (its output to ``log``); True when it succeeded."""
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ hubcompare " + " ".join(args) + "\n")
        f.flush()
        done = subprocess.run(["nice", "-n", "19", exe, *args], stdout=f, stderr=subprocess.STDOUT)
    return done.returncode == 0


def _blocks(run: Path, meta: dict, exe: str, data: list[str], compute: bool) -> dict | None:
    out = HERE / "blocks" / run.name
    doc = out / "blocks.json"
    source = out / "weights_sha256.txt"
    fresh = doc.is_file() and source.is_file() and source.read_text().strip() == meta["weights_sha256"]
    if not fresh and compute:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        if _hubcompare(exe, ["blocks", str(run), *data, "--threads", "1", "--out", str(out)], HERE / "analyse.log"):
            source.write_text(meta["weights_sha256"] + "\n")
            fresh = True
    return json.loads(doc.read_text()) if fresh else None


def _findings(rows: list[tuple[Path, dict, dict | None]], exe: str, data: list[str], compute: bool) -> dict[str, list[str]]:
    """probes + delete-blocks for each model with a block; across-seeds for each (architecture, fraction) with one."""
    done: dict[str, list[str]] = defaultdict(list)
    seeds: dict[tuple, list[Path]] = defaultdict(list)
    for run, meta, blocks in rows:
        seeds[(meta["depth"], meta["width"], meta["data_fraction"])].append(run)
        if not blocks or not blocks["blocks"]:
            continue
        for kind in ("probes", "delete-blocks"):
            out = HERE / "findings" / run.name / kind
            if (out / f"{kind.replace('-', '_')}.json").is_file() or any(out.glob("*.json")):
                done[run.name].append(kind)
            elif compute and _hubcompare(exe, [kind, str(run), *data, "--threads", "1", "--out", str(out)], HERE / "analyse.log"):
                done[run.name].append(kind)
    for run, meta, blocks in rows:
        key = (meta["depth"], meta["width"], meta["data_fraction"])
        runs = seeds[key]
        if not blocks or not blocks["blocks"] or len(runs) < 2 or run != runs[0]:
            continue
        out = HERE / "findings" / f"across-seeds-d{meta['depth']}-w{meta['width']:g}-f{meta['data_fraction']:g}"
        if any(out.glob("*.json")):
            done[run.name].append("across-seeds")
        elif compute and _hubcompare(exe, ["across-seeds", *map(str, runs), *data, "--threads", "1", "--out", str(out)],
                                     HERE / "analyse.log"):
            done[run.name].append("across-seeds")
    return done


def _kept(present: set[str], underfit: bool) -> list[tuple[Path, dict, dict | None]]:
    """Rows analysed here before whose checkpoints are not in the population folder now (models.json + blocks/)."""
    old = HERE / "models.json"
    rows = []
    for entry in json.loads(old.read_text()) if old.is_file() else []:
        doc = HERE / "blocks" / entry["run"] / "blocks.json"
        if entry["run"] not in present and bool(entry.get("underfit")) == underfit and doc.is_file():
            rows.append((Path(entry["run"]), entry, json.loads(doc.read_text())))
    return rows


def _merged_grid(new: dict) -> dict:
    """The population's manifest merged into the grid.json here by run name."""
    old_path = HERE / "grid.json"
    if not old_path.is_file():
        return new
    old = json.loads(old_path.read_text())
    fresh = {r["name"]: r for r in new["runs"]}
    runs = [fresh.pop(r["name"], r) for r in old["runs"]] + list(fresh.values())
    return old | {"updated_at": new.get("updated_at"), "runs": runs}


def _inside_pc1(blocks: dict) -> float | None:
    """Mean PC1 share over the layers inside the detected blocks (None without a block)."""
    inside = [i for b in blocks["blocks"] for i in range(b["start"], b["stop"] + 1)]
    return sum(blocks["pc1_fraction"][i] for i in inside) / len(inside) if inside else None


def _table(rows: list[tuple[Path, dict, dict | None]]) -> str:
    cells: dict[tuple, list] = defaultdict(list)
    for run, meta, blocks in rows:
        cells[(meta["depth"], meta["width"], meta["data_fraction"])].append((meta, blocks))
    lines = ["| architecture | fraction (images) | blocks / seeds | mean PC1 inside | max PC1 share | train acc | test acc "
             "| epochs |", "|---|---|---|---|---|---|---|---|"]
    for (depth, width, frac), models in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        metas = [m for m, _ in models]
        analysed = [b for _, b in models if b]
        with_block = [b for b in analysed if b["blocks"]]
        inside = [v for v in map(_inside_pc1, with_block) if v is not None]
        images = metas[0].get("train_data", {}).get("num_examples") if isinstance(metas[0].get("train_data"), dict) else None
        def each(values, fmt="{:.3f}"):
            return " / ".join(fmt.format(v) for v in values) or "-"
        count = f" ({images:,})" if images else ""
        lines.append(f"| {_arch(metas[0])} | {_frac(frac)}{count} | {len(with_block)} / {len(analysed)} | {each(inside, '{:.2f}')} "
                     f"| {each([max(b['pc1_fraction']) for b in analysed], '{:.2f}')} "
                     f"| {each([m['train_accuracy'] for m in metas])} | {each([m['test_accuracy'] for m in metas])} "
                     f"| {each([m['epochs'] for m in metas], '{}')} |")
    return "\n".join(lines) + "\n"


def _figure(rows: list[tuple[Path, dict, dict | None]], path: Path) -> None:
    series: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    threshold = None
    for run, meta, blocks in rows:
        if blocks:
            series[_arch(meta)].append((meta["data_fraction"], max(blocks["pc1_fraction"]), meta["seed"]))
            threshold = blocks["params"]["pc1_threshold"]
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for i, (arch, points) in enumerate(sorted(series.items())):
        colour = f"C{i}"
        by_frac: dict[float, list[float]] = defaultdict(list)
        for frac, pc1, _ in points:
            by_frac[frac].append(pc1)
        xs = sorted(by_frac)
        ax.plot(xs, [sum(by_frac[x]) / len(by_frac[x]) for x in xs], color=colour, marker="o", label=arch)
        ax.scatter([p[0] for p in points], [p[1] for p in points], color=colour, s=12, alpha=0.5)
    if threshold is not None:
        ax.axhline(threshold, color="grey", lw=0.8, ls=":")
        ax.text(1 / 300, threshold + 0.01, f"PC1-dominated at >= {threshold}", color="grey", fontsize=8)
    ax.set_xscale("log", base=2)
    fracs = sorted({p[0] for pts in series.values() for p in pts})
    ax.set_xticks(fracs, [_frac(f) for f in fracs])
    ax.set_xlabel("fraction of the cifar10-jpeg training split")
    ax.set_ylabel("maximum PC1 share over the model's layers")
    ax.set_ylim(0, 1)
    ax.set_title("Capacity vs data: the most PC1-dominated layer of each model\n(dots: seeds and kept under-fit rungs; "
                 "line: mean)", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("population", type=Path)
    ap.add_argument("--data-dir", default="../shared/data/cifar10-jpeg")
    ap.add_argument("--hubcompare", default=str(Path(sys.executable).with_name("hubcompare")),
                    help="the hubcompare executable (default: the one beside this Python)")
    ap.add_argument("--no-compute", action="store_true", help="only tabulate what is already here")
    args = ap.parse_args()
    data = ["--dataset", "cifar10-jpeg", "--data-dir", args.data_dir]
    rows = []
    for run, meta in _finished(args.population):
        rows.append((run, meta, _blocks(run, meta, args.hubcompare, data, not args.no_compute)))
    findings = _findings(rows, args.hubcompare, data, not args.no_compute)
    if (args.population / "grid.json").is_file():
        merged = _merged_grid(json.loads((args.population / "grid.json").read_text()))
        (HERE / "grid.json").write_text(json.dumps(merged, indent=1) + "\n")
    underfit = [(run, meta, _blocks(run, meta, args.hubcompare, data, not args.no_compute))
                for run, meta in _finished(args.population, "underfit/*/config.json")]
    old_findings = {e["run"]: e.get("findings", []) for e in json.loads((HERE / "models.json").read_text())} \
        if (HERE / "models.json").is_file() else {}
    rows += _kept({r.name for r, _, _ in rows}, underfit=False)
    underfit += _kept({r.name for r, _, _ in underfit}, underfit=True)
    for run, _, _ in rows:
        findings.setdefault(run.name, old_findings.get(run.name, []))
    (HERE / "models.json").write_text(json.dumps(
        [{"run": run.name, **{k: meta.get(k) for k in PROVENANCE}, "blocks": len(b["blocks"]) if b else None,
          "findings": findings.get(run.name, []), "underfit": False} for run, meta, b in rows]
        + [{"run": run.name, **{k: meta.get(k) for k in PROVENANCE}, "blocks": len(b["blocks"]) if b else None,
            "findings": [], "underfit": True} for run, meta, b in underfit], indent=1) + "\n")
    table = _table(rows)
    if underfit:
        table += ("\nThe fit rule's kept rungs (below 0.99 train accuracy at their last epoch; each is being trained "
                  "again for more epochs, and replaces this row when it fits):\n\n" + _table(underfit))
    (HERE / "table.md").write_text(table)
    _figure(rows + underfit, HERE / "pc1-vs-fraction.png")
    print((HERE / "table.md").read_text())


if __name__ == "__main__":
    main()
