"""Block structure on digits from a plain PyTorch training loop (no project trainer), seed by seed.

The experiment behind README.md's "Block detection" table: a ResNet-56 on scikit-learn digits
(1,297 training images, native 8x8), 60 epochs, SGD momentum 0.9, weight decay 5e-4 on every
parameter, lr warm-up over 3 epochs then cosine, both stepped per batch, PyTorch default init and
BN (momentum 0.1, eps 1e-5), contiguous (NCHW) tensors. ``--shift batch`` moves a whole batch
by one random 1-pixel offset (zero padding), ``--shift image`` gives each image its own. Each seed
prints test accuracy, the detected blocks and the PC1 profile, one JSON line per seed; ``--out``
also writes each seed's block figure and report; ``--checkpoints DIR`` writes each seed's model as a
checkpoint folder (``DIR/plain-dDEPTH-wWIDTH-sSEED``) that every hubcompare command loads (probes,
delete-blocks, cka, ...), its path in the seed's JSON line.

    python benchmarks/blocks_plain_loop.py --width 2 --shift batch --seeds 0 1 2 3 4   # ~3 min/seed, 1 thread
    python benchmarks/blocks_plain_loop.py --width 1 --shift batch --lr 0.1
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

import hubcompare  # noqa: F401  (registers the model family)
from hubcompare.data.augment import pad_crop_flip
from hubcompare.data.datasets import load_dataset
from hubcompare.models.resnet import CifarResNet
from hubcompare.similarity.blocks import analyze_blocks
from hubcompare.similarity.engine import CompareModel


def write_run(folder: Path, model: nn.Module, train, test, depth: int, width: int, seed: int, lr: float, shift: str,
              epochs: int, batch: int, seconds: float) -> Path:
    """The trained model as a checkpoint folder, built through timm as ``hubcompare train`` builds its own (same
    weights, loaded into a ``cifar_resnet`` with this run's BN constants), with predictions and a model card."""
    from datetime import datetime, timezone

    import timm

    from hubcompare.models.metadata import ModelMeta
    from hubcompare.models.predictions import predict
    from hubcompare.models.weights import write_checkpoint
    from hubcompare.provenance import package_versions

    c, h, w = train.image_shape
    saved = timm.create_model("cifar_resnet", depth=depth, width=width, num_classes=train.num_classes, in_chans=c,
                              bn_momentum=0.1, bn_eps=1e-5, init="torch",
                              pretrained_cfg_overlay=dict(input_size=(c, h, w), num_classes=train.num_classes,
                                                          label_names=list(train.classes), mean=(0.0,) * c, std=(1.0,) * c,
                                                          tag=train.name))
    saved.load_state_dict(model.state_dict())
    saved.eval()
    preds = predict(saved, test)
    recipe = {"name": "blocks_plain_loop", "model": {"depth": depth, "width": width, "init": "torch", "bn_momentum": 0.1,
                                                     "bn_eps": 1e-5},
              "train": {"epochs": epochs, "batch_size": batch, "lr": lr, "momentum": 0.9, "weight_decay": 5e-4,
                        "weight_decay_on": "all", "schedule": "3-epoch warm-up then cosine, per step", "shift": shift}}
    meta = ModelMeta(architecture="cifar_resnet", depth=depth, width=width, bn_momentum=0.1, bn_eps=1e-5, in_chans=c,
                     num_classes=train.num_classes, class_names=list(train.classes), dataset=train.name, data_fraction=1.0,
                     seed=seed, epochs=epochs, test_accuracy=preds.accuracy, train_data=train.describe(),
                     test_data=test.describe(), recipe=recipe, wall_time_s=round(seconds, 2), precision="fp32",
                     torch_threads=torch.get_num_threads(), package_versions=package_versions(),
                     created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    run_dir = folder / f"plain-d{depth}-w{width}-s{seed}"
    write_checkpoint(run_dir, saved, meta, preds)
    return run_dir


def train_and_analyse(depth: int, width: int, seed: int, lr: float, shift: str, epochs: int = 60, batch: int = 128,
                      out: Path | None = None, checkpoints: Path | None = None) -> dict:
    torch.manual_seed(seed)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    model = CifarResNet(depth, width, 10, 1)
    for m in model.modules():  # PyTorch's default init and BN constants
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
        if isinstance(m, nn.BatchNorm2d):
            m.momentum, m.eps = 0.1, 1e-5
    x, y, xt = train.images.float() / 255, train.labels, test.images.float() / 255
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    per_epoch = math.ceil(len(x) / batch)
    total, warm = per_epoch * epochs, per_epoch * 3
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    g = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            if shift == "batch":  # one offset for the whole batch
                xb = nn.functional.pad(x[idx], (1, 1, 1, 1))
                dx, dy = torch.randint(0, 3, (2,), generator=g)
                xb = xb[:, :, dy : dy + 8, dx : dx + 8]
            else:
                xb = pad_crop_flip(x[idx], 1, False, g, "constant")
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == test.labels).float().mean().item()
    result = dict(depth=depth, width=width, seed=seed, lr=lr, shift=shift, seconds=round(time.perf_counter() - started),
                  test_accuracy=round(acc, 4))
    if checkpoints is not None:
        result["checkpoint"] = str(write_run(checkpoints, model, train, test, depth, width, seed, lr, shift, epochs, batch,
                                             time.perf_counter() - started))
    try:
        rep = analyze_blocks(CompareModel(f"plain-s{seed}", model), test, batch_size=250, pc_examples=500)
    except Exception as e:  # a diverged model has NaN activations: report, go on with the next seed
        return result | {"error": str(e).splitlines()[0]}
    if out is not None:  # the figure a person checks the detector against, and its numbers
        from hubcompare.provenance import atomic_write_json
        from hubcompare.similarity.plots import plot_block_report

        name = f"blocks-d{depth}-w{width}-{shift}-lr{lr}-s{seed}"
        plot_block_report(rep, out / f"{name}.png")
        atomic_write_json(out / f"{name}.json", rep.to_json())
    return result | dict(
        blocks=[dict(layers=f"{b.start}-{b.stop}", mean_cka=round(b.mean_cka, 3), outside=round(b.outside_cka, 3),
                     mean_pc1=round(b.mean_pc1, 3), names=b.layers) for b in rep.blocks],
        pc1=[round(float(v), 2) for v in rep.pcs.fraction])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=56)
    ap.add_argument("--width", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--shift", choices=("batch", "image"), default="batch")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="folder for each seed's blocks figure (.png) and report (.json)")
    ap.add_argument("--checkpoints", type=Path, help="folder for each seed's model as a hubcompare checkpoint folder")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    found = 0
    for s in a.seeds:
        r = train_and_analyse(a.depth, a.width, s, a.lr, a.shift, a.epochs, out=a.out, checkpoints=a.checkpoints)
        found += bool(r.get("blocks"))
        print(json.dumps(r), flush=True)
    print(f"blocks in {found} of {len(a.seeds)} seeds")


if __name__ == "__main__":
    main()
