"""Bundled training recipes; installed as ``hubcompare.bundled.recipes`` (package data, see pyproject.toml)."""
