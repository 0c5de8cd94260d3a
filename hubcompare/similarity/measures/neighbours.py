"""Mutual k-nearest-neighbour alignment: do two layers give the examples the same neighbours?"""

from __future__ import annotations

import torch

from ...errors import MeasureError
from .base import LayerInputs, Measure, Param
from .kernels import squared_distances

__all__ = ["MutualKNN", "nearest"]


def nearest(x: LayerInputs, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's k nearest neighbours (Euclidean, itself excluded; among equal distances the lower index): their
    indices (n, k) and the same as a boolean (n, n) matrix."""
    sq = squared_distances(x.gram)
    sq.fill_diagonal_(float("inf"))
    idx = torch.topk(sq, k, dim=1, largest=False, sorted=True).indices
    adj = torch.zeros(sq.shape, dtype=torch.bool, device=sq.device)
    adj.scatter_(1, idx, True)
    return idx, adj


class MutualKNN(Measure):
    """The share of each example's k nearest neighbours that are the same in both layers, averaged over examples."""

    name = "mknn"
    listing = 3
    definition = ("mutual k-NN alignment: for each example, the share of its k nearest neighbours (Euclidean, "
                  "itself excluded) that are the same in both layers, averaged")
    citation = "Huh, Cheung, Wang & Isola 2024 (ICML, 'The Platonic Representation Hypothesis')"
    params = (Param("k", 10, 1, 1000, "neighbours per example", integer=True),)

    def smallest_batch(self) -> int:
        return self.values["k"] + 1

    def check_batch(self, n: int) -> None:
        if n <= self.values["k"]:
            raise MeasureError(f"mknn with k = {self.values['k']} needs minibatches of more than k examples (got {n}): "
                               "lower k or raise batch_size", params=("batch_size", "measures"))

    def contribution(self, layers: list[LayerInputs], pairs: torch.Tensor | None = None) -> torch.Tensor:
        k = self.values["k"]
        found = [nearest(x, k) for x in layers]
        out = torch.full((len(layers), len(layers)), float("nan"), dtype=torch.float64)
        for i, (idx, _) in enumerate(found):
            for j in range(i, len(found)):
                if pairs is not None and not pairs[i, j]:
                    continue
                shared = int(found[j][1].gather(1, idx).sum())  # neighbours of i's lists that j's lists hold too
                out[i, j] = out[j, i] = shared / k  # n * (mean over examples of the shared share)
        return out
