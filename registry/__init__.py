"""Curated registry entries; installed as ``hubcompare.bundled.registry`` (package data, see pyproject.toml)."""
