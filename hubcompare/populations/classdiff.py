"""Class-level differences between two populations: per-model class accuracy, Welch's t-test per class.

The paper's class-level finding: per-model accuracy on each class, A's models against B's, tested
per class with Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``); raw p beside
Benjamini-Hochberg q; mean difference with a Welch-Satterthwaite confidence interval. The null
is the same analysis between two disjoint random halves of one population, over many splits: how
many classes come out significant when nothing differs, and each class's 95% band of differences.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TooFewModelsError
from ..provenance import atomic_write_json, atomic_write_text
from . import stats
from .nulls import MIN_NULL_HALF, comparison_provenance, example_split, null_side_for, small_null_warning
from .sides import Side, check_aligned

__all__ = ["MIN_MODELS", "ClassDiffResult", "class_diff"]

MIN_MODELS = 2  # per side, for a variance


@dataclass
class ClassDiffResult:
    """Per-class Welch tests of A vs B (arrays over classes) and the split-half null."""

    label_a: str
    label_b: str
    classes: list[str]
    class_acc_a: np.ndarray  # (models of A, classes)
    class_acc_b: np.ndarray
    welch: stats.Welch
    q: np.ndarray
    alpha: float
    null: dict | None  # side, splits, half_size, band_lo/hi (K,), significant_per_split, example {diff, ci_lo, ci_hi, q}
    provenance: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def significant(self) -> np.ndarray:
        return np.nan_to_num(self.q, nan=1.0) < self.alpha

    def order(self) -> np.ndarray:
        """Classes sorted by raw p (untestable ones last), then by the size of the difference."""
        p = np.nan_to_num(self.welch.p, nan=2.0)
        return np.lexsort((-np.abs(self.welch.diff), p))

    def rows(self) -> list[dict]:
        w = self.welch
        out = []
        for k in self.order():
            row = {"class": self.classes[k], "index": int(k), "mean_a": w.mean_a[k], "mean_b": w.mean_b[k], "difference": w.diff[k],
                   "ci_lo": w.ci_lo[k], "ci_hi": w.ci_hi[k], "t": w.t[k], "df": w.df[k], "p": w.p[k], "q": self.q[k],
                   "significant": bool(self.significant[k])}
            if self.null is not None:
                row |= {"null_band_lo": self.null["band_lo"][k], "null_band_hi": self.null["band_hi"][k]}
            out.append({key: (None if isinstance(v, float) and not np.isfinite(v) else (float(v) if isinstance(v, np.floating) else v))
                        for key, v in row.items()})
        return out

    def summary(self) -> dict:
        s = {"classes": len(self.classes), "models": {"a": int(self.class_acc_a.shape[0]), "b": int(self.class_acc_b.shape[0])},
             "alpha": self.alpha, "significant_q": int(self.significant.sum()),
             "significant_p": int((np.nan_to_num(self.welch.p, nan=1.0) < self.alpha).sum()),
             "untestable": int(np.isnan(self.welch.p).sum())}
        if self.null is not None:
            per = self.null["significant_per_split"]
            s["null"] = {"side": self.null["side"], "splits": self.null["splits"], "half_size": self.null["half_size"],
                         "mean_significant_q": float(per.mean()), "share_of_splits_with_any_significant": float((per > 0).mean()),
                         "too_small": self.null["too_small"], "min_half_size": MIN_NULL_HALF}
        return s

    def to_json(self) -> dict:
        return {"kind": "class-diff", "side_a": self.label_a, "side_b": self.label_b, "summary": self.summary(),
                "classes": self.rows(), "warnings": self.warnings, "provenance": self.provenance}

    def to_csv(self) -> str:
        rows = self.rows()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in r.items()})
        return buf.getvalue()

    def save(self, out_dir: str | Path) -> list[Path]:
        """``class_diff.json`` (table, summary, provenance) and ``class_diff.csv`` (the sorted table), atomically."""
        out_dir = Path(out_dir)
        return [atomic_write_json(out_dir / "class_diff.json", self.to_json()),
                atomic_write_text(out_dir / "class_diff.csv", self.to_csv())]


def class_diff(a: Side, b: Side, *, alpha: float = 0.05, splits: int = 1000, seed: int = 0, null_side: str = "auto",
               settings: dict | None = None) -> ClassDiffResult:
    """Welch's t-test per class between the sides' per-model class accuracies, with BH q and the split-half null."""
    check_aligned(a, b)
    short = [s for s in (a, b) if s.num_models < MIN_MODELS]
    if short:
        raise TooFewModelsError(
            "class-diff needs at least 2 models per side (Welch's t-test needs a variance on each side): "
            + ", ".join(f"side {s.label} has {s.num_models}" for s in short)
            + ". Add seeds (e.g. a population) to that side; for two single models use agreement (McNemar's exact test)."
        )
    k = a.num_classes
    xa, xb = stats.class_accuracy(a.correct, a.labels, k), stats.class_accuracy(b.correct, b.labels, k)
    conf = 1 - alpha
    w = stats.welch(xa, xb, confidence=conf)
    q = stats.bh_qvalues(w.p)
    warnings = list(dict.fromkeys(a.warnings + b.warnings))
    if np.isnan(w.p).any():
        warnings.append(f"{int(np.isnan(w.p).sum())} class(es) have zero variance on both sides (e.g. every model 100% right): "
                        "no test, counted as not significant")
    one_sided = int(((np.ptp(xa, 0) == 0) ^ (np.ptp(xb, 0) == 0)).sum())
    if one_sided:
        warnings.append(f"{one_sided} class(es) have zero variance on one side only (every model of that side equally right): "
                        "their Welch test rests on the other side's variance alone")
    null = None
    nside = null_side_for(a, b, null_side, need=2 * MIN_MODELS)
    if nside is None:
        warnings.append(f"no side has {2 * MIN_MODELS} models: no split-half null (each half needs {MIN_MODELS})")
    else:
        rng = np.random.default_rng(seed)
        memb = stats.random_halves(rng, nside.num_models, splits)
        x = xa if nside is a else xb
        diff, p, half = stats.welch_halves(x, memb, confidence=conf)
        qs = stats.bh_qvalues_rows(p)
        lo, hi = np.quantile(diff, [(1 - 0.95) / 2, 1 - (1 - 0.95) / 2], axis=0)
        null = {"side": nside.label, "splits": splits, "half_size": nside.num_models // 2, "band_lo": lo, "band_hi": hi,
                "significant_per_split": (np.nan_to_num(qs, nan=1.0) < alpha).sum(1),
                "example": {"diff": diff[0], "ci_lo": diff[0] - half[0], "ci_hi": diff[0] + half[0], "q": qs[0]},
                "example_split": example_split(nside, memb[0])}
        small = small_null_warning(nside.label, nside.num_models, null["half_size"])
        null["too_small"] = small is not None
        if small:
            warnings.append(small)
    result = ClassDiffResult(a.label, b.label, list(a.classes), xa, xb, w, q, alpha, null, warnings=warnings)
    result.provenance = comparison_provenance(
        "class-diff", a, b, seed=seed, null=null,
        settings={"alpha": alpha, "confidence": conf, "test": "scipy.stats.ttest_ind(equal_var=False)",
                  "multiple_testing": "Benjamini-Hochberg", "splits": splits, "null_side": null_side, **(settings or {})},
    )
    return result
