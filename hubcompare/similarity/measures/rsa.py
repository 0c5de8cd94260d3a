"""Representational similarity analysis: rank correlation between two layers' dissimilarity matrices."""

from __future__ import annotations

import torch

from .base import ROW_STATS, LayerInputs, Measure

__all__ = ["RSA", "average_ranks", "correlation_rdm"]


def correlation_rdm(x: LayerInputs) -> torch.Tensor:
    """The correlation-distance RDM (n, n): 1 - Pearson correlation between two examples' feature vectors (NaN rows
    for an example whose features are all equal)."""
    r = x.example_centred_gram()
    d = r.diagonal().clamp_min(0.0)
    scale = d.sqrt()
    scale = torch.where(d > 0, scale, torch.full_like(scale, float("nan")))
    return 1.0 - r / (scale.unsqueeze(0) * scale.unsqueeze(1))


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``v``, ties given their average rank (``scipy.stats.rankdata``'s default)."""
    order = torch.argsort(v)
    sv = v[order]
    new = torch.ones_like(sv, dtype=torch.bool)
    new[1:] = sv[1:] != sv[:-1]
    group = torch.cumsum(new.long(), 0) - 1
    counts = torch.bincount(group).to(torch.float64)
    starts = torch.cumsum(counts, 0) - counts
    ranks = torch.empty_like(v, dtype=torch.float64)
    ranks[order] = (starts + (counts + 1) / 2)[group]
    return ranks


class RSA(Measure):
    """Spearman correlation between the upper triangles of two correlation-distance RDMs."""

    name = "rsa"
    listing = 2
    definition = ("Spearman correlation between the upper triangles (i < j) of two RDMs, each entry 1 - Pearson "
                  "correlation between two examples' feature vectors")
    citation = "Kriegeskorte, Mur & Bandettini 2008 (Front. Syst. Neurosci.)"
    value_range = (-1.0, 1.0)
    needs = frozenset({ROW_STATS})

    def contribution(self, layers: list[LayerInputs], pairs: torch.Tensor | None = None) -> torch.Tensor:
        n = layers[0].gram.shape[0]
        iu = torch.triu_indices(n, n, 1)
        z = []
        for x in layers:
            upper = correlation_rdm(x)[iu[0], iu[1]]
            if not torch.isfinite(upper).all():
                z.append(torch.full_like(upper, float("nan")))
                continue
            r = average_ranks(upper)
            r = r - r.mean()
            norm = r.norm()
            z.append(r / norm if norm > 0 else torch.full_like(r, float("nan")))
        zs = torch.stack(z)
        return (zs @ zs.T) * n  # every pair in one product: the mask saves nothing
