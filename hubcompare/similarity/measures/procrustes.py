"""Orthogonal Procrustes similarity (and the angular shape distance) between two layers, through their Grams."""

from __future__ import annotations

import torch

from .base import FLOAT64_GRAM, LayerInputs, Measure, symmetric_pairs

__all__ = ["Procrustes", "gram_root"]


def gram_root(x: LayerInputs) -> torch.Tensor | None:
    """``G`` (n, r) with ``G G^T`` the layer's centred Gram scaled to unit trace (r its numerical rank), so that
    ``||Xc^T Yc||_* / (||Xc||_F ||Yc||_F) = ||G_x^T G_y||_*``; None when the layer is constant."""
    evals, evecs = x.spectrum()
    if evals.numel() == 0:
        return None
    return evecs * (evals / evals.sum()).sqrt()


class Procrustes(Measure):
    """The nuclear norm of Xc^T Yc for centred features scaled to unit Frobenius norm; arccos of it is the angular
    shape distance of Williams et al."""

    name = "procrustes"
    listing = 4
    definition = ("orthogonal Procrustes similarity: the nuclear norm of X^T Y for features centred and scaled to unit "
                  "Frobenius norm (arccos of it, the angular shape distance, is reported beside it)")
    citation = "Schoenemann 1966; Williams, Kunz, Kornblith & Linderman 2021 (NeurIPS, shape metrics)"
    needs = frozenset({FLOAT64_GRAM})  # a sum of square roots of eigenvalues: float32 rounding would add ~1e-4

    def contribution(self, layers: list[LayerInputs], pairs: torch.Tensor | None = None) -> torch.Tensor:
        n = layers[0].gram.shape[0]
        roots = [gram_root(x) for x in layers]
        # a layer against itself: ||G^T G||_* = tr(G^T G) = 1
        return symmetric_pairs(roots, lambda gi, gj: torch.linalg.svdvals(gi.T @ gj).sum(), diagonal=1.0,
                               pairs=pairs) * n

    def derived(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"angular_distance": torch.arccos(value.clamp(-1.0, 1.0))}
