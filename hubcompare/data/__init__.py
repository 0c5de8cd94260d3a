"""Datasets as uint8 tensors with stable example ids and fingerprints (``datasets``), and batched
augmentation (``augment``)."""
