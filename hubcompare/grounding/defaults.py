"""Grounding's numbers that the command line shows before any model runs: a torch-free leaf."""

from __future__ import annotations

__all__ = ["DEFAULT_EXAMPLES", "MIN_SEEDS", "TESTS"]

MIN_SEEDS = 5  # specificity and the function test compare seeds with each other
DEFAULT_EXAMPLES = 500
TESTS = ("specificity", "layer order", "top-pc removal", "low-pc removal", "function", "control")  # table order
