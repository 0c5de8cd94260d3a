"""Populations compared through per-example predictions: ``sides`` (naming and aligning them),
``stats`` (vectorised statistics), ``nulls`` (the split-half null), ``agreement``, ``classdiff``,
``synthetic`` (populations with known truth) and ``plots``."""
