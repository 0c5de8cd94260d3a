"""Representational similarity: layer capture, the CKA estimator, the streaming k-model engine,
block-structure detection and their figures."""

from __future__ import annotations

from .capture import InputSpec, LayerCapture, LayerInfo
from .cka import MinibatchCKA, cka, gram, hsic1, u_center
from .results import CKAResult, relative_depth_match
from .engine import CompareModel, Comparison, compare
from .blocks import Block, BlockReport, PCAnalysis, analyze_blocks, detect_blocks, pc_analysis
from .plots import plot_block_report, plot_cka

__all__ = ["InputSpec", "LayerCapture", "LayerInfo", "MinibatchCKA", "cka", "gram", "hsic1", "u_center", "CKAResult", "relative_depth_match", "CompareModel", "Comparison", "compare", "Block", "BlockReport", "PCAnalysis", "analyze_blocks", "detect_blocks", "pc_analysis", "plot_block_report", "plot_cka"]
