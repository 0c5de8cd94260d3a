"""Populations compared through per-example predictions: naming sides, vectorised statistics,
agreement, class differences and their figures."""

from __future__ import annotations

from .sides import SIDE_FORMS, Member, Side, check_aligned, default_cache_dir, expand_side, load_side
from .agreement import AgreementResult, agreement
from .classdiff import ClassDiffResult, class_diff
from .plots import plot_agreement, plot_class_diff

__all__ = ["SIDE_FORMS", "Member", "Side", "check_aligned", "default_cache_dir", "expand_side", "load_side", "AgreementResult", "agreement", "ClassDiffResult", "class_diff", "plot_agreement", "plot_class_diff"]
