"""Result objects of comparisons: numbers + provenance, saved as .npz (arrays) and .json (everything).

Library functions return these; plotting (:mod:`hubcompare.similarity.plots`) and printing (the CLI) live apart.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..provenance import atomic_write_bytes, atomic_write_json

__all__ = ["CKAResult", "relative_depth_match"]


def relative_depth_match(la: int, lb: int) -> np.ndarray:
    """For each of ``la`` layers, the index of the layer at the same relative depth among ``lb``."""
    if la == 1:
        return np.zeros(1, dtype=int)
    return np.rint(np.arange(la) * (lb - 1) / (la - 1)).astype(int)


@dataclass
class CKAResult:
    """CKA between the layers of model A (rows) and model B (columns), with jackknife standard errors."""

    ref_a: str
    ref_b: str
    layers_a: list[str]
    layers_b: list[str]
    boundaries_a: list[int]
    boundaries_b: list[int]
    value: np.ndarray
    se: np.ndarray
    kind: str = "cross"  # cross | within | within-pc1-removed
    provenance: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    label_a: str | None = None  # what figures and tables call model A (default: its reference)
    label_b: str | None = None

    @property
    def name_a(self) -> str:
        return self.label_a or self.ref_a

    @property
    def name_b(self) -> str:
        return self.label_b or self.ref_b

    @property
    def shape(self) -> tuple[int, int]:
        return self.value.shape  # type: ignore[return-value]

    @property
    def mean_off_diagonal_cka(self) -> float | None:
        """Within-model results: mean CKA over distinct layer pairs (undefined, NaN, layers left out);
        None for cross-model results, whose off-diagonal means nothing in particular."""
        if self.kind == "cross" or self.value.shape[0] < 2:
            return None
        off = self.value[~np.eye(self.value.shape[0], dtype=bool)]
        return float(np.nanmean(off)) if np.isfinite(off).any() else None

    @property
    def max_se(self) -> float | None:
        """The largest jackknife standard error (None with a single minibatch: no SE)."""
        return float(np.nanmax(self.se)) if np.isfinite(self.se).any() else None

    def summary(self) -> dict:
        """Mean 'diagonal' CKA (same relative depth), and for each layer of A the best match in B;
        within a model, also the mean CKA between distinct layers."""
        match = relative_depth_match(*self.value.shape)
        diag = self.value[np.arange(len(match)), match]
        finite = np.where(np.isfinite(self.value), self.value, -np.inf)
        best = finite.argmax(1)
        s = {
            "mean_diagonal_cka": float(np.nanmean(diag)),
            "diagonal": "same layer index" if self.value.shape[0] == self.value.shape[1] else "same relative depth",
            "mean_cka": float(np.nanmean(self.value)),
            "max_se": self.max_se,
            "best_match": [
                {"layer_a": self.layers_a[i], "layer_b": self.layers_b[j], "cka": float(self.value[i, j]), "se": float(self.se[i, j])}
                for i, j in enumerate(best)
            ],
        }
        if self.kind != "cross":
            s["mean_off_diagonal_cka"] = self.mean_off_diagonal_cka
        return s

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "ref_a": self.ref_a,
            "ref_b": self.ref_b,
            "label_a": self.name_a,
            "label_b": self.name_b,
            "layers_a": self.layers_a,
            "layers_b": self.layers_b,
            "stage_boundaries_a": self.boundaries_a,
            "stage_boundaries_b": self.boundaries_b,
            "cka": np.where(np.isfinite(self.value), self.value, None).tolist(),
            "se": np.where(np.isfinite(self.se), self.se, None).tolist(),
            "summary": self.summary(),
            "warnings": self.warnings,
            "provenance": self.provenance,
        }

    def save(self, stem: str | Path) -> tuple[Path, Path]:
        """Write ``stem.npz`` (cka, se, layer names) and ``stem.json`` (all of it + provenance), atomically."""
        stem = Path(stem)
        buf = io.BytesIO()
        np.savez(buf, cka=self.value, se=self.se, layers_a=np.array(self.layers_a), layers_b=np.array(self.layers_b),
                 provenance=np.array(json.dumps(self.provenance)))
        npz = atomic_write_bytes(stem.with_suffix(".npz"), buf.getvalue())
        js = atomic_write_json(stem.with_suffix(".json"), self.to_json())
        return npz, js

    @classmethod
    def load(cls, path: str | Path) -> "CKAResult":
        d = json.loads(Path(path).with_suffix(".json").read_text())
        arr = lambda v: np.array([[np.nan if x is None else x for x in row] for row in v], dtype=float)  # noqa: E731
        return cls(d["ref_a"], d["ref_b"], d["layers_a"], d["layers_b"], d["stage_boundaries_a"], d["stage_boundaries_b"],
                   arr(d["cka"]), arr(d["se"]), d["kind"], d["provenance"], d["warnings"], d.get("label_a"), d.get("label_b"))
