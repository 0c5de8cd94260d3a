"""CKA-type measures: linear CKA (the engine's own, :mod:`..cka`) and CKA with a Gaussian (RBF) kernel.

Both use the unbiased HSIC_1 of each minibatch and the minibatch estimator of Nguyen et al. (2021): ``n * HSIC``
summed over minibatches, normalised at the end (:class:`~..cka.MinibatchCKA`, which also gives the jackknife SE).
"""

from __future__ import annotations

import torch

from ..cka import MinibatchCKA, u_center
from .base import LayerInputs, Measure, Param

__all__ = ["LinearCKA", "RBFCKA", "median_distance", "squared_distances"]


def squared_distances(gram: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between examples from their Gram: ``K_ii + K_jj - 2 K_ij`` (>= 0, zero diagonal)."""
    d = gram.diagonal()
    out = (d.unsqueeze(0) + d.unsqueeze(1) - 2.0 * gram).clamp_min_(0.0)
    out.fill_diagonal_(0.0)
    return out


def median_distance(sq: torch.Tensor) -> float:
    """The median Euclidean distance over pairs i < j (numpy's median: the mean of the middle two for an even count)."""
    n = sq.shape[0]
    iu = torch.triu_indices(n, n, 1, device=sq.device)
    dist = sq[iu[0], iu[1]].sqrt()
    m = dist.numel()
    lo = dist.kthvalue((m + 1) // 2).values
    hi = dist.kthvalue(m // 2 + 1).values if m % 2 == 0 else lo
    return float((lo + hi) / 2)


class LinearCKA(Measure):
    """Linear CKA: what the engine computes for every comparison (its fast path is in :mod:`..engine`)."""

    name = "cka"
    listing = 0
    definition = "linear CKA: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), linear Grams, unbiased HSIC_1"
    citation = "Kornblith et al. 2019 (ICML); minibatch estimator: Nguyen, Raghu & Kornblith 2021 (ICLR)"
    estimator = "unbiased HSIC_1 per minibatch, batch-size-weighted sums normalised at the end"

    def check_batch(self, n: int) -> None:
        u_center(torch.zeros(n, n, dtype=torch.float64))  # n > 3 (the estimator divides by n (n - 3))

    def contribution(self, layers: list[LayerInputs], pairs: torch.Tensor | None = None) -> torch.Tensor:
        return MinibatchCKA.contribution(torch.stack([u_center(x.gram) for x in layers]))  # every pair: one product

    def accumulator(self, num_layers: int) -> MinibatchCKA:
        return MinibatchCKA(num_layers)


class RBFCKA(LinearCKA):
    """CKA with a Gaussian kernel whose bandwidth follows each layer's scale on each minibatch."""

    name = "rbf-cka"
    listing = 1
    definition = ("CKA with Gaussian kernels exp(-|xi - xj|^2 / (2 sigma^2)), sigma = frac x the median pairwise "
                  "distance (i != j) of the minibatch; unbiased HSIC_1")
    citation = "Kornblith et al. 2019 (ICML)"
    params = (Param("frac", 0.8, 0.01, 100.0, "the bandwidth as a multiple of the median pairwise distance"),)

    def kernel(self, x: LayerInputs) -> torch.Tensor:
        """The layer's RBF kernel matrix on this minibatch (all ones, so HSIC 0 and CKA undefined, when every example
        is the same)."""
        sq = squared_distances(x.gram)
        sigma = self.values["frac"] * median_distance(sq)
        if not sigma > 0:
            return torch.ones_like(sq)
        return torch.exp(sq / (-2.0 * sigma * sigma))

    def contribution(self, layers: list[LayerInputs], pairs: torch.Tensor | None = None) -> torch.Tensor:
        return MinibatchCKA.contribution(torch.stack([u_center(self.kernel(x)) for x in layers]))  # one product
