"""Tabulate the 200-epoch ResNet-14 population and draw its PC1 shares, from the files a user can check.

Reads each finished run's ``config.json`` (accuracies, training time, weights sha256, recipe hash, data
fingerprints) under the grid's output folder and the ``hubcompare blocks`` JSON beside this script
(``blocks-r14-w{W}-s{S}.json``; the 50-epoch ones from ``../cifar10jpeg-r14-f16/`` for comparison). Writes
``models.json`` (the provenance of every row), ``pc1-by-layer.png`` and prints the README's markdown table.

    .venv/bin/python docs/results/cifar10jpeg-r14-f16-e200/summarise.py runs/cifar10jpeg-r14-f16-e200 runs/cifar10jpeg-r14-f16
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
EPOCHS_50 = HERE.parent / "cifar10jpeg-r14-f16"
PROVENANCE = ("depth", "width", "seed", "epochs", "data_fraction", "test_accuracy", "train_accuracy", "wall_time_s",
              "recipe_hash", "weights_sha256", "train_data", "test_data", "device", "created_at")


def _blocks(folder: Path, width: int, seed: int) -> dict | None:
    path = folder / f"blocks-r14-w{width}-s{seed}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _row(meta: dict, blocks: dict | None, epochs_note: str = "") -> str:
    pc1 = blocks["pc1_fraction"] if blocks else []
    top = max(range(len(pc1)), key=pc1.__getitem__) if pc1 else None
    pc1_max = f"{pc1[top]:.3f} ({blocks['layers'][top]})" if pc1 else "n/a"
    median = f"{sorted(pc1)[len(pc1) // 2]:.3f}" if pc1 else "n/a"
    found = len(blocks["blocks"]) if blocks else "n/a"
    seconds = f"{meta['wall_time_s']:,.0f} s" if meta.get("wall_time_s") else ""
    train = f"{meta['train_accuracy']:.4f}" if meta.get("train_accuracy") is not None else "n/a"
    return (f"| {meta['width']}x | {meta['seed']} | {meta['epochs']}{epochs_note} | {meta['test_accuracy']:.4f} | {train} "
            f"| {found} | {pc1_max} | {median} | {seconds} |")


def _finished(grid_out: Path) -> list[dict]:
    """The card metadata of every finished run under a grid's output folder, widest first."""
    metas = [json.loads(config.read_text())["hubcompare"] for config in sorted(grid_out.glob("*/config.json"))
             if (config.parent / "predictions.safetensors").is_file()]
    return sorted(metas, key=lambda m: (-m["width"], m["seed"]))


def main(grid_out: Path, grid_out_50: Path) -> None:
    metas = _finished(grid_out)
    (HERE / "models.json").write_text(json.dumps([{k: m.get(k) for k in PROVENANCE} for m in metas], indent=1) + "\n")

    print("| width | seed | epochs | test acc | train acc | blocks | PC1 share max | PC1 median | training time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in metas:
        print(_row(m, _blocks(HERE, m["width"], m["seed"])))
    for m in _finished(grid_out_50):  # the 50-epoch runs that were given a blocks analysis
        blocks = _blocks(EPOCHS_50, m["width"], m["seed"])
        if blocks:
            print(_row(m, blocks, " (for comparison)"))

    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    colours = {4: "tab:blue", 2: "tab:orange", 1: "tab:green"}
    layers, threshold = None, None
    curves = [(m, _blocks(HERE, m["width"], m["seed"]), "-" if m["seed"] == 0 else "--", 1.0, "") for m in metas]
    curves += [(m, _blocks(EPOCHS_50, m["width"], m["seed"]), ":", 0.6, ", 50 epochs") for m in _finished(grid_out_50)]
    for m, blocks, style, alpha, note in curves:
        if blocks:
            layers, threshold = blocks["layers"], blocks["params"]["pc1_threshold"]
            ax.plot(blocks["pc1_fraction"], marker="o", ms=4, color=colours.get(m["width"]), ls=style, alpha=alpha,
                    label=f"{m['width']}x seed {m['seed']}{note} (test {m['test_accuracy']:.3f})")
    if layers:
        ax.set_xticks(range(len(layers)), [name.replace(".out", "") for name in layers], rotation=30, ha="right")
        ax.axhline(threshold, color="grey", lw=0.8, ls=":")
        ax.text(0, threshold + 0.01, f"a block needs PC1 share >= {threshold} over 4+ layers", color="grey", fontsize=8)
    ax.set_ylim(0, 0.6)
    ax.set_ylabel("PC1 share of the layer's variance")
    ax.set_title("ResNet-14 on 1/16 of cifar10-jpeg (3,125 images): PC1 share per layer")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(HERE / "pc1-by-layer.png", dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cifar10jpeg-r14-f16-e200"),
         Path(sys.argv[2] if len(sys.argv) > 2 else "runs/cifar10jpeg-r14-f16"))
