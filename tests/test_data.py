"""Datasets: offline digits, npz and image folders, stable ids, fingerprints, stratified subsets, errors."""

import numpy as np
import pytest
import torch

from hubcompare.data.augment import pad_crop_flip
from hubcompare.data.datasets import load_dataset, parse_fraction, stratified_subset
from hubcompare.errors import DatasetError, DatasetNotFoundError


def test_digits_splits_are_fixed_disjoint_and_fingerprinted():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1297, 500)
    assert train.image_shape == (1, 8, 8) and train.images.dtype == torch.uint8
    assert not set(train.ids) & set(test.ids)
    assert test.labels.bincount().tolist() == [50, 51, 49, 51, 50, 51, 50, 50, 48, 50]  # stratified
    again = load_dataset("digits", "test")
    assert again.ids == test.ids and again.fingerprint == test.fingerprint
    assert train.fingerprint != test.fingerprint
    # the fingerprint reacts to a label change and to a pixel change in the sample
    changed = load_dataset("digits", "test")
    changed.labels[3] = (changed.labels[3] + 1) % 10
    assert changed.fingerprint != test.fingerprint
    changed = load_dataset("digits", "test")
    changed.images[0, 0, 4, 4] ^= 1
    assert changed.fingerprint != test.fingerprint


@pytest.mark.parametrize("fraction,expected", [(1, 1.0), ("1/4", 0.25), ("1/16", 0.0625), (0.5, 0.5)])
def test_parse_fraction(fraction, expected):
    assert parse_fraction(fraction) == expected


@pytest.mark.parametrize("bad", [0, 1.5, "-1/4", "a quarter"])
def test_bad_fraction(bad):
    with pytest.raises(DatasetError, match="fraction"):
        parse_fraction(bad)


def test_stratified_subset_is_seeded_and_class_balanced():
    train = load_dataset("digits", "train")
    a, b = stratified_subset(train, "1/4", seed=1), stratified_subset(train, "1/4", seed=1)
    c = stratified_subset(train, "1/4", seed=2)
    assert a.ids == b.ids and a.ids != c.ids
    assert len(a) == round(len(train) / 4)
    full_counts = train.labels.bincount().double()
    assert torch.allclose(a.labels.bincount().double(), full_counts / 4, atol=1.0)
    assert set(a.ids) <= set(train.ids)
    assert a.parent_fingerprint == train.fingerprint
    tiny = stratified_subset(train, "1/16", seed=0)
    assert tiny.labels.unique().numel() == 10
    assert stratified_subset(train, 1, seed=0) is train


def _write_npz(folder, n, channels_last=True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3) if channels_last else (n, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(n) % 10
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", images=images, labels=labels, classes=np.array([f"c{i}" for i in range(10)]))
    return images, labels


def test_npz_folder(tmp_path):
    images, labels = _write_npz(tmp_path, 40)
    ds = load_dataset("cifar10", "test", tmp_path)
    assert ds.image_shape == (3, 32, 32) and len(ds) == 40
    assert torch.equal(ds.images[5], torch.from_numpy(images[5]).permute(2, 0, 1))
    assert ds.classes[0] == "c0" and ds.ids[0] == "test-00"
    # a path to one of the files works too
    assert load_dataset("cifar10", "train", tmp_path / "test.npz").ids[0] == "train-00"


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    ds = load_dataset("imagefolder", "test", tmp_path)
    assert ds.classes == ["cat", "dog"] and len(ds) == 6 and ds.image_shape == (3, 12, 12)
    assert ds.ids[0] == "cat/0.png" and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data_dir") as e:
        load_dataset("cifar10", "test", tmp_path)
    assert e.value.params == ("data_dir",)  # the command line names its option for it
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("cifar100", "test", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="cifar10-jpeg"):
        load_dataset("cifar10-jpeg", "test")
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_cifar10_jpeg_copy(cifar10_jpeg):
    ds = load_dataset("cifar10-jpeg", "test", cifar10_jpeg)
    assert len(ds) == 10000 and ds.image_shape == (3, 32, 32)
    assert ds.classes[0] == "airplane" and ds.labels.bincount().tolist() == [1000] * 10


def _brute_force_is_crop(out, img, pad, flip_allowed, mode):
    padded = torch.nn.functional.pad(img[None], (pad,) * 4, mode=mode)[0]
    h, w = img.shape[1:]
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            crop = padded[:, oy : oy + h, ox : ox + w]
            if torch.equal(out, crop) or (flip_allowed and torch.equal(out, crop.flip(2))):
                return True
    return False


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_batched_augmentation_is_a_crop_or_flip_of_each_image(mode):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = pad_crop_flip(x, pad=2, flip=True, generator=g, pad_mode=mode)
    assert out.shape == x.shape
    assert all(_brute_force_is_crop(out[i], x[i], 2, True, mode) for i in range(64))
    assert not torch.equal(out, x)  # something moved
    # seeded: same generator state, same result
    again = pad_crop_flip(x, 2, True, torch.Generator().manual_seed(0), mode)
    assert torch.equal(out, again)
    # without flips no image is mirrored (unless it happens to be a crop)
    no_flip = pad_crop_flip(x, 2, False, g, mode)
    assert all(_brute_force_is_crop(no_flip[i], x[i], 2, False, mode) for i in range(64))


def _offset(out, img, pad, mode):
    padded = torch.nn.functional.pad(img[None], (pad,) * 4, mode=mode)[0]
    h, w = img.shape[1:]
    return {(oy, ox) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1) if torch.equal(out, padded[:, oy : oy + h, ox : ox + w])}


def test_batch_offsets_shift_every_image_alike():
    """augment.offsets: batch moves the whole batch by one offset; example gives each image its own."""
    x = torch.rand(32, 1, 8, 8)
    out = pad_crop_flip(x, 1, False, torch.Generator().manual_seed(3), "constant", offsets="batch")
    offsets = [_offset(out[i], x[i], 1, "constant") for i in range(32)]
    assert all(len(o) == 1 for o in offsets) and len(set.union(*offsets)) == 1
    per_image = pad_crop_flip(x, 1, False, torch.Generator().manual_seed(3), "constant")
    assert len(set.union(*[_offset(per_image[i], x[i], 1, "constant") for i in range(32)])) > 1
