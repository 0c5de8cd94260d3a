"""Representational similarity: layer capture, the CKA estimator, the streaming k-model engine,
block-structure detection and their figures."""

from __future__ import annotations

from .capture import LayerCapture, LayerInfo
from .cka import MinibatchCKA, cka, gram, hsic1, u_center
from .results import CKAResult, relative_depth_match
from .engine import CompareModel, Comparison, Minibatch, compare, comparison_dataset, minibatch_plan
from .blocks import Block, BlockCriteria, BlockReport, PCAnalysis, analyze_blocks, detect_blocks, pc_analysis
from .plots import plot_block_report, plot_cka

__all__ = ["LayerCapture", "LayerInfo", "MinibatchCKA", "cka", "gram", "hsic1", "u_center", "CKAResult",
           "relative_depth_match", "CompareModel", "Comparison", "Minibatch", "compare", "comparison_dataset",
           "minibatch_plan", "Block", "BlockCriteria", "BlockReport", "PCAnalysis", "analyze_blocks", "detect_blocks",
           "pc_analysis", "plot_block_report", "plot_cka"]
