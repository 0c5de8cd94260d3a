"""Datasets as uint8 tensors with stable example ids and fingerprints, and batched augmentation."""

from __future__ import annotations

from .datasets import DATASETS, ImageDataset, load_dataset, parse_fraction, stratified_subset, default_data_root
from .augment import pad_crop_flip, to_float

__all__ = ["DATASETS", "ImageDataset", "load_dataset", "parse_fraction", "stratified_subset", "default_data_root", "pad_crop_flip", "to_float"]
