"""Training a recipe into a checkpoint folder: recipes, the resumable loop, re-evaluation."""

from __future__ import annotations

from .recipes import Recipe, find_recipe, load_recipe
from .loop import TrainEvent, TrainResult, train
from .evaluate import EvalReport, evaluate_checkpoint

__all__ = ["Recipe", "find_recipe", "load_recipe", "TrainEvent", "TrainResult", "train", "EvalReport", "evaluate_checkpoint"]
