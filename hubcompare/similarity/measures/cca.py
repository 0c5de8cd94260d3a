"""Subspace measures through the Grams: SVCCA, PWCCA and linear regression R^2.

Both read each layer's principal directions from its centred Gram (:meth:`~.base.LayerInputs.spectrum`, computed in
float64 products): the span of the centred features' columns, as seen by the examples, is the span of the Gram's
eigenvectors. Where a layer has as many features as examples or more, that span is (almost) every direction the
minibatch has, so CCA-type and regression measures approach 1 whatever the layers compute: with p >= n - 1 the
centred features span every centred direction and a least-squares fit is exact. Read them with batches well larger
than the layers' ranks (or on layers narrower than the batch), as the literature does.

PWCCA weighs each canonical correlation by how much of the row layer's neurons its canonical variate accounts for,
which needs the neurons themselves: it declares :data:`~.base.FEATURES` (each layer's centred features kept until the
minibatch's end: O(layers x batch x features) memory, and one (features x rank) product per layer pair).
"""

from __future__ import annotations

import torch

from .base import FEATURES, FLOAT64_GRAM, LayerInputs, Measure, Param, symmetric_pairs

__all__ = ["LinearRegression", "PWCCA", "SVCCA", "principal_basis"]


def principal_basis(x: LayerInputs, variance: float = 1.0) -> torch.Tensor | None:
    """An orthonormal basis (n, k) of the examples' coordinates on the fewest principal directions that explain
    ``variance`` of the layer's variance (1.0: all of its numerical rank); None for a constant layer."""
    evals, evecs = x.spectrum()
    if evals.numel() == 0:
        return None
    if variance >= 1.0:
        return evecs
    share = torch.cumsum(evals, 0) / evals.sum()
    k = int(torch.searchsorted(share, torch.tensor(variance, dtype=share.dtype))) + 1
    return evecs[:, : min(k, evals.numel())]


class SVCCA(Measure):
    """Mean canonical correlation between two layers after keeping each one's top principal directions."""

    name = "svcca"
    listing = 5
    definition = ("SVCCA: keep each layer's top principal directions explaining `keep` of its variance, then the mean "
                  "of the canonical correlations between the two reduced layers")
    citation = "Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017 (NeurIPS)"
    params = (Param("keep", 0.99, 0.01, 1.0, "the share of each layer's variance its kept directions explain"),)
    needs = frozenset({FLOAT64_GRAM})

    def contribution(self, layers: list[LayerInputs], pairs: torch.Tensor | None = None) -> torch.Tensor:
        n = layers[0].gram.shape[0]
        bases = [principal_basis(x, self.values["keep"]) for x in layers]
        # canonical correlations: the singular values of Q_x^T Q_y
        # a layer against itself: every canonical correlation is 1
        return symmetric_pairs(bases, lambda bi, bj: torch.linalg.svdvals(bi.T @ bj).clamp(max=1.0).mean(),
                               diagonal=1.0, pairs=pairs) * n


class PWCCA(Measure):
    """Projection-weighted CCA (Morcos, Raghu & Bengio 2018): the canonical correlations between two layers, each
    weighted by how strongly its canonical variate projects onto the row layer's neurons (asymmetric)."""

    name = "pwcca"
    listing = 6
    definition = ("PWCCA: CCA between the two layers (every direction of their numerical rank), each canonical "
                  "correlation weighted by sum_j |<h_i, x_j>| (h_i the row layer's canonical variate, x_j its neurons), "
                  "the weights normalised to sum to 1 (asymmetric: weights from the row layer)")
    citation = "Morcos, Raghu & Bengio 2018 (NeurIPS)"
    symmetric = False
    needs = frozenset({FLOAT64_GRAM, FEATURES})

    def contribution(self, layers: list[LayerInputs], pairs: torch.Tensor | None = None) -> torch.Tensor:
        n = layers[0].gram.shape[0]
        bases = [principal_basis(x) for x in layers]  # U (n, r): the centred features' column space, orthonormal
        # X^T U (p, r): each neuron's inner products with the basis; X^T h = (X^T U) a for a variate h = U a
        loads = [None if b is None else x.centred().T @ b for x, b in zip(layers, bases)]
        out = torch.full((len(layers), len(layers)), float("nan"), dtype=torch.float64)

        def weighted(load: torch.Tensor, weights_in_basis: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
            alpha = (load @ weights_in_basis).abs().sum(0)  # sum_j |<h_i, x_j>| for each canonical variate h_i
            return (alpha * rho.clamp(max=1.0)).sum() / alpha.sum()

        for i, (bi, li) in enumerate(zip(bases, loads)):
            for j in range(i, len(bases)):
                bj, lj = bases[j], loads[j]
                if bi is None or bj is None or (pairs is not None and not pairs[i, j]):
                    continue
                # one SVD per pair serves both directions: U_i^T U_j = A diag(rho) B^T, A the row layer's canonical
                # weights when i is the row, B when j is
                a, rho, bt = torch.linalg.svd(bi.T @ bj, full_matrices=False)
                out[i, j] = weighted(li, a, rho)
                out[j, i] = weighted(lj, bt.T, rho)
        return out * n


class LinearRegression(Measure):
    """R^2 of predicting one layer's features from another's by least squares (asymmetric)."""

    name = "linreg"
    listing = 7
    definition = ("linear regression R^2: the share of the column layer's centred feature variance that a least-squares "
                  "fit from the row layer's features explains (asymmetric: row predicts column)")
    citation = "Kornblith, Norouzi, Lee & Hinton 2019 (ICML), as a baseline; Klabunde et al. 2025 (ICLR, ReSi)"
    symmetric = False
    needs = frozenset({FLOAT64_GRAM})

    def contribution(self, layers: list[LayerInputs], pairs: torch.Tensor | None = None) -> torch.Tensor:
        n = layers[0].gram.shape[0]
        bases = [principal_basis(x) for x in layers]  # every pair in one product: the mask saves nothing
        out = torch.full((len(layers), len(layers)), float("nan"), dtype=torch.float64)
        rows = [i for i, b in enumerate(bases) if b is not None]
        totals = torch.stack([y.gram.diagonal().sum() for y in layers])
        cols = [j for j in range(len(layers)) if totals[j] > 0]
        if rows and cols:
            # ||P_X Yc||_F^2 / ||Yc||_F^2 = tr(U^T K_y U) / tr(K_y) = <U U^T, K_y>_F / tr(K_y): every pair in one product
            projectors = torch.stack([bases[i] @ bases[i].T for i in rows]).flatten(1)
            grams = torch.stack([layers[j].gram for j in cols]).flatten(1)
            out[torch.tensor(rows).unsqueeze(1), torch.tensor(cols)] = (projectors @ grams.T) / totals[cols]
        return out * n
