"""Training throughput: hubcompare's in-memory batched pipeline vs a plain torchvision DataLoader loop.

Same model (ResNet-20, 1x), same optimizer, same batch size, same CIFAR-shaped data, one epoch
each, measured one after the other in this process. Prints images/s for every variant and the
ratio to the plain loop. The hubcompare figure is the real trainer (`hubcompare.training.train`) on
an npz copy of the data, timed from its start event to its first epoch event.

    python benchmarks/train_throughput.py                       # 10,000 synthetic CIFAR-shaped images
    python benchmarks/train_throughput.py --images 50000 --data-dir ../shared/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import hubcompare  # noqa: F401  (registers cifar_resnet)
from hubcompare.data.datasets import load_dataset
from hubcompare.training.loop import TrainEvent, build_model, resolve_precision, train
from hubcompare.training.recipes import load_recipe


class PilCifar(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: numpy HWC -> PIL -> transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def plain_epoch(recipe, data, images_hwc, labels, workers: int, channels_last: bool) -> float:
    torch.manual_seed(0)
    model = build_model(recipe, data)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    t = recipe["train"]
    opt = torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
    ])
    loader = DataLoader(PilCifar(images_hwc, labels, tf), batch_size=t["batch_size"], shuffle=True,
                        num_workers=workers, persistent_workers=False)
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(labels) / (time.perf_counter() - start)


def hubcompare_epoch(recipe, data_dir: Path, out: Path) -> float:
    marks = {}

    def on_event(e: TrainEvent):
        if e.kind == "start":
            marks["start"] = time.perf_counter()
            marks["n"] = e.num_train
        elif e.kind == "epoch":
            marks["end"] = time.perf_counter()

    train(recipe, out, data_dir=data_dir, on_event=on_event, overwrite=True)
    return marks["n"] / (marks["end"] - marks["start"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000, help="images in the epoch (CIFAR-10 has 50,000)")
    ap.add_argument("--data-dir", type=Path, default=None, help="folder with train.npz (default: synthetic data)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to try")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    if args.data_dir:
        z = np.load(args.data_dir / "train.npz")
        pick = np.sort(rng.permutation(len(z["labels"]))[: args.images])
        images, labels, source = z["images"][pick], z["labels"][pick], f"{args.data_dir} (random {args.images})"
    else:
        images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, args.images).astype(np.int64)
        source = "synthetic uint8"
    recipe = load_recipe("cifar10", {"model.depth": 20, "model.width": 1, "train.epochs": 1, "data.dataset": "cifar10"})

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for split, n in (("train", None), ("test", 1000)):
            np.savez(tmp / f"{split}.npz", images=images[:n], labels=labels[:n])
        data = load_dataset("cifar10", "train", tmp)
        print(f"ResNet-20 (1x), batch {recipe['train']['batch_size']}, {args.images} images of {source}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}")
        rows = []
        for w in args.workers:
            rows.append((f"plain DataLoader + torchvision transforms, workers={w}", plain_epoch(recipe, data, images, labels, w, False)))
        best_w = max(zip(args.workers, [r[1] for r in rows]), key=lambda t: t[1])[0]
        rows.append((f"plain loop + channels_last, workers={best_w}", plain_epoch(recipe, data, images, labels, best_w, True)))
        for precision in ("fp32", "auto"):
            label = f"hubcompare trainer, precision={precision} ({resolve_precision(precision)})"
            rows.append((label, hubcompare_epoch(recipe.with_overrides({"train.precision": precision}), tmp, tmp / "run")))
    plain_best = max(r[1] for r in rows[: len(args.workers)])
    print(f"{'variant':<62} {'images/s':>9} {'vs best plain':>14}")
    for name, ips in rows:
        print(f"{name:<62} {ips:>9.1f} {ips / plain_best:>13.2f}x")


if __name__ == "__main__":
    main()
