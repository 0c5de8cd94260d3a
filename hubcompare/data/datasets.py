"""Datasets behind one interface: uint8 image tensors in memory, labels, class names and stable ids.

Every dataset is loaded whole into memory as an :class:`ImageDataset` (CIFAR-10 is 150 MB as
uint8), in a deterministic order where every example has a stable id. Its :attr:`fingerprint`
(a hash of the labels and a pixel sample) goes into every result so that two results can be
checked to be about the same data.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import DatasetError, DatasetNotFoundError

__all__ = [
    "ImageDataset",
    "DATASETS",
    "load_dataset",
    "stratified_subset",
    "parse_fraction",
    "shuffle_labels",
    "default_data_root",
]

SPLITS = ("train", "test")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGITS_TEST_SIZE = 500  # of 1,797: leaves 1,297 for training
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(eq=False)
class ImageDataset:
    """A split held in memory. ``images`` is uint8 (N, C, H, W); ``labels`` int64 (N,)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    ids: list[str]
    source: str = ""
    parent_fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DatasetError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        n = self.images.shape[0]
        if self.labels.shape != (n,) or len(self.ids) != n:
            raise DatasetError(f"{self.name}: {n} images but {len(self.labels)} labels and {len(self.ids)} ids")
        if len(set(self.ids)) != n:
            raise DatasetError(f"{self.name}: example ids are not unique")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @cached_property
    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the shape, labels, ids and an evenly spaced sample of images."""
        h = hashlib.sha256()
        h.update(repr(tuple(self.images.shape)).encode())
        h.update(self.labels.numpy().astype("<i8").tobytes())
        h.update("\n".join(self.ids).encode())
        sample = np.unique(np.linspace(0, len(self) - 1, num=min(len(self), 512)).astype(np.int64))
        h.update(np.ascontiguousarray(self.images[torch.from_numpy(sample)].numpy()).tobytes())
        return h.hexdigest()[:16]

    def subset(self, indices: Sequence[int] | torch.Tensor, tag: str = "") -> "ImageDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(
            name=self.name,
            split=self.split + (f"[{tag}]" if tag else ""),
            images=self.images[idx],
            labels=self.labels[idx],
            classes=self.classes,
            ids=[self.ids[i] for i in idx.tolist()],
            source=self.source,
            parent_fingerprint=self.fingerprint,
        )

    def describe(self) -> dict:
        """Provenance record that goes into every result."""
        d = {
            "name": self.name,
            "split": self.split,
            "num_examples": len(self),
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "fingerprint": self.fingerprint,
            "source": self.source,
        }
        if self.parent_fingerprint:
            d["parent_fingerprint"] = self.parent_fingerprint
        return d


# --- fractions and subsets --------------------------------------------------------------------
def parse_fraction(value: float | int | str) -> float:
    """Accept 1, 0.25, "1/4", "1/16"; return a float in (0, 1]."""
    try:
        frac = float(Fraction(str(value).strip())) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError) as e:
        raise DatasetError(f"data fraction {value!r} is not a number: use e.g. 1, 0.25 or 1/16.") from e
    if not 0 < frac <= 1:
        raise DatasetError(f"data fraction {value!r} must be in (0, 1]: use e.g. 1, 1/4 or 1/16.")
    return frac


def stratified_subset(ds: ImageDataset, fraction: float | str, seed: int) -> ImageDataset:
    """A seeded, class-stratified draw of ``fraction`` of ``ds`` (at least one example per class).

    Per-class counts follow the largest-remainder rule so that they sum to round(fraction * N);
    indices are returned in the dataset's own order.
    """
    frac = parse_fraction(fraction)
    if frac == 1.0:
        return ds
    labels = ds.labels.numpy()
    rng = np.random.default_rng(seed)
    total = int(round(frac * len(ds)))
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes])
    exact = frac * counts
    take = np.floor(exact).astype(int)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: max(0, total - take.sum())]] += 1
    take = np.clip(take, 1, counts)
    chosen = []
    for c, k in zip(classes, take):
        members = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(members)[:k])
    idx = np.sort(np.concatenate(chosen))
    return ds.subset(torch.from_numpy(idx), tag=f"fraction={Fraction(frac).limit_denominator(1000)},seed={seed}")


def shuffle_labels(ds: ImageDataset, fraction: float, seed: int) -> ImageDataset:
    """``ds`` with the labels of a seeded draw of ``fraction`` of its examples permuted among those examples (Zhang et
    al. 2017's partially random labels): a control population for grounding tests. The class counts are kept; the
    split's tag and fingerprint record the change."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
        raise DatasetError(f"shuffled label fraction {fraction!r} must be a number in [0, 1]: e.g. 0 (none) or 1 (all).")
    if fraction == 0:
        return ds
    rng = np.random.default_rng([seed, 0x5EED])  # a stream of its own: the subset draw with the same seed is unchanged
    chosen = np.sort(rng.permutation(len(ds))[: int(round(fraction * len(ds)))])
    labels = ds.labels.clone()
    labels[torch.from_numpy(chosen)] = ds.labels[torch.from_numpy(rng.permutation(chosen))]
    return ImageDataset(name=ds.name, split=f"{ds.split}[shuffled_labels={fraction:g},seed={seed}]", images=ds.images,
                        labels=labels, classes=ds.classes, ids=ds.ids, source=ds.source, parent_fingerprint=ds.fingerprint)


# --- loaders ----------------------------------------------------------------------------------
def default_data_root() -> Path:
    """Where downloads go when no ``data_dir`` is given: $HUBCOMPARE_DATA_DIR or ~/.cache/hubcompare/data."""
    env = os.environ.get("HUBCOMPARE_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "hubcompare" / "data"


def _from_arrays(name, split, images, labels, classes, id_prefix, source, ids=None) -> ImageDataset:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if images.dtype != np.uint8:
        raise DatasetError(f"{source}: images must be uint8 in [0, 255], got {images.dtype}")
    labels = np.asarray(labels).astype(np.int64)
    if ids is None:
        width = len(str(len(labels) - 1))
        ids = [f"{id_prefix}{i:0{width}d}" for i in range(len(labels))]
    return ImageDataset(
        name=name,
        split=split,
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels),
        classes=[str(c) for c in classes],
        ids=list(ids),
        source=source,
    )


def _load_digits(split: str, data_dir: Path | None, download: bool) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    labels = bunch.target.astype(np.int64)
    # fixed, stratified train/test split (seed 0) so that every user gets the same test set
    rng = np.random.default_rng(0)
    is_test = np.zeros(len(labels), dtype=bool)
    exact = DIGITS_TEST_SIZE * np.bincount(labels) / len(labels)
    take = np.floor(exact).astype(int)
    take[np.argsort(-(exact - take), kind="stable")[: DIGITS_TEST_SIZE - take.sum()]] += 1
    for c, k in enumerate(take):
        is_test[rng.permutation(np.flatnonzero(labels == c))[:k]] = True
    keep = np.flatnonzero(is_test if split == "test" else ~is_test)
    return _from_arrays(
        "digits", split, pixels[keep], labels[keep], [str(i) for i in range(10)], "",
        "scikit-learn load_digits (8x8, 0..16 scaled to 0..255)", ids=[f"digits-{i:04d}" for i in keep],
    )


def _npz_file(data_dir: Path, split: str) -> Path | None:
    if data_dir.is_file() and data_dir.suffix == ".npz":
        sibling = data_dir.with_name(f"{split}.npz")
        return sibling if sibling.is_file() else (data_dir if data_dir.stem == split else None)
    candidate = data_dir / f"{split}.npz"
    return candidate if candidate.is_file() else None


def _load_npz(name: str, path: Path, split: str, default_classes: list[str] | None) -> ImageDataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z or "labels" not in z:
                raise DatasetError(f"{path} must hold arrays 'images' (N, H, W, C) uint8 and 'labels' (N,); it has {list(z.keys())}")
            images, labels = z["images"], z["labels"]
            classes = [str(c) for c in z["classes"]] if "classes" in z else default_classes
    except (OSError, ValueError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"cannot read {path}: {e}") from e
    if classes is None:
        classes = [str(i) for i in range(int(labels.max()) + 1)]
    return _from_arrays(name, split, images, labels, classes, f"{split}-", f"npz:{path.resolve()}")


def _cifar_loader(name: str, tv_name: str, num_classes: int, folder: str, npz_only: bool = False) -> Callable:
    default_classes = CIFAR10_CLASSES if num_classes == 10 else None

    def load(split: str, data_dir: Path | None, download: bool) -> ImageDataset:
        if data_dir is not None:
            if not data_dir.exists():
                raise DatasetNotFoundError(f"data_dir {data_dir} does not exist. {_HOW_TO[name]}", params=("data_dir",))
            npz = _npz_file(data_dir, split)
            if npz is not None:
                return _load_npz(name, npz, split, default_classes)
            if npz_only:
                raise DatasetNotFoundError(f"no {split}.npz in {data_dir}. {_HOW_TO[name]}", params=("data_dir",))
        if npz_only:
            raise DatasetNotFoundError(f"{name} needs a data_dir. {_HOW_TO[name]}", params=("data_dir",))
        root = data_dir or default_data_root()
        if not (root / folder).is_dir() and data_dir is not None:
            raise DatasetNotFoundError(f"no {split}.npz and no torchvision '{folder}' folder in {root}. {_HOW_TO[name]}",
                                       params=("data_dir",))
        import torchvision

        cls = getattr(torchvision.datasets, tv_name)
        try:
            tv = cls(str(root), train=(split == "train"), download=download and not (root / folder).is_dir())
        except Exception as e:  # torchvision raises RuntimeError/URLError/OSError depending on what failed
            raise DatasetNotFoundError(f"{name} is not in {root} and could not be downloaded ({e}). {_HOW_TO[name]}",
                                       params=("data_dir",)) from e
        return _from_arrays(name, split, tv.data, tv.targets, tv.classes, f"{split}-", f"torchvision:{tv_name}:{root.resolve()}")

    return load


def _load_imagefolder(split: str, data_dir: Path | None, download: bool) -> ImageDataset:
    from PIL import Image

    if data_dir is None:
        raise DatasetNotFoundError(f"imagefolder needs a data_dir. {_HOW_TO['imagefolder']}", params=("data_dir",))
    root = data_dir / split if (data_dir / split).is_dir() else data_dir
    if not root.is_dir():
        raise DatasetNotFoundError(f"data_dir {data_dir} is not a folder. {_HOW_TO['imagefolder']}", params=("data_dir",))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(f, c) for c, cls in enumerate(classes) for f in sorted((root / cls).rglob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise DatasetNotFoundError(f"no images in class sub-folders of {root}. {_HOW_TO['imagefolder']}", params=("data_dir",))
    first = Image.open(files[0][0])
    mode = "L" if first.mode in ("L", "1", "I;16") else "RGB"
    size = first.size
    arrays = []
    for f, _ in files:
        with Image.open(f) as im:
            im = im.convert(mode)
            if im.size != size:
                im = im.resize(size, Image.BILINEAR)
            arrays.append(np.asarray(im, dtype=np.uint8))
    images = np.stack(arrays)
    ids = [str(f.relative_to(root)) for f, _ in files]
    return _from_arrays("imagefolder", split, images, [c for _, c in files], classes, "", f"imagefolder:{root.resolve()}", ids=ids)


_HOW_TO = {
    "cifar10": "Run once with network access (torchvision downloads it to $HUBCOMPARE_DATA_DIR or "
    "~/.cache/hubcompare/data), or point data_dir at a torchvision CIFAR-10 root or at a folder "
    "with train.npz/test.npz ('images' uint8 NHWC, 'labels').",
    "cifar100": "Run once with network access (torchvision downloads it to $HUBCOMPARE_DATA_DIR or "
    "~/.cache/hubcompare/data), or point data_dir at a torchvision CIFAR-100 root or a folder with "
    "train.npz/test.npz.",
    "cifar10-jpeg": "Point data_dir at the folder holding train.npz/test.npz of the JPEG-degraded "
    "CIFAR-10 copy (e.g. ../shared/data/cifar10-jpeg).",
    "imagefolder": "Point data_dir at a folder with train/ and test/ sub-folders, each holding one "
    "sub-folder of images per class (torchvision ImageFolder layout).",
    "digits": "",
}

DATASETS: dict[str, Callable[[str, Path | None, bool], ImageDataset]] = {
    "digits": _load_digits,
    "cifar10": _cifar_loader("cifar10", "CIFAR10", 10, "cifar-10-batches-py"),
    "cifar10-jpeg": _cifar_loader("cifar10-jpeg", "CIFAR10", 10, "cifar-10-batches-py", npz_only=True),
    "cifar100": _cifar_loader("cifar100", "CIFAR100", 100, "cifar-100-python"),
    "imagefolder": _load_imagefolder,
}


def load_dataset(name: str, split: str = "test", data_dir: str | Path | None = None, download: bool = True) -> ImageDataset:
    """Load a whole split into memory. ``name``: one of :data:`DATASETS`."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}.")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: choose 'train' or 'test'.")
    return DATASETS[name](split, Path(data_dir).expanduser() if data_dir is not None else None, download)
