"""Per-example agreement between two sides: accuracy per example, the split-half null, error consistency.

The paper's comparison: each example's accuracy averaged over a population's seeds, side A against
side B, judged against a null made the same way from two disjoint random halves of one side's
population, over many splits. Differences are put on one scale by their hypergeometric SD given the
example's pooled accuracy (``stats.split_sd``) and the null's 95% band, pooled over examples, is
drawn at A's and B's SD; an example every model gets right (or wrong) has a difference of exactly
0 and is inside. How many examples fall outside that band by chance is not what the halves say:
accuracies are multiples of 1/h there, the band's edges sit on heavy atoms of that lattice, and
A vs B lie on a finer lattice that the same edges cut differently (on synthetic populations with
no difference the halves' own count runs 1.4x to 6.5x below, and 0 at halves of 1-2 models). So
the count is judged against relabellings of the pooled models at the sides' own sizes (the same
relabellings as the permutation test, the exact test): their mean is the count to expect and
their share at or above it a p-value. Error consistency is Cohen's kappa on right/wrong (Geirhos
et al. 2020). For two single models: kappa, agreement and McNemar's exact test.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..provenance import atomic_write_json, atomic_write_text
from . import stats
from .nulls import MIN_NULL_HALF, comparison_provenance, example_split, null_side_for, small_null_warning
from .sides import Side, check_aligned

__all__ = ["AgreementResult", "agreement"]

BAND_TOL = 1e-6  # the null is computed in float32; accuracies are multiples of 1/models


@dataclass
class AgreementResult:
    """Everything `hubcompare agreement` reports; arrays are per example unless named otherwise."""

    label_a: str
    label_b: str
    ids: list[str]
    labels: np.ndarray
    acc_a: np.ndarray
    acc_b: np.ndarray
    model_accuracy_a: np.ndarray
    model_accuracy_b: np.ndarray
    kappa: dict  # within_a / within_b / across: pair summaries
    agreement: dict  # within_a / within_b / across: mean prediction-agreement rate
    permutation: stats.PermutationTest | None
    null: dict | None  # side, splits, half_size, band_lo, band_hi, outside, expected_outside (under relabelling),
    #                    outside_test (BandCount.to_json), split_half_outside (the halves' own count), example_a, example_b
    pair: dict | None  # two single models: kappa, agreement, McNemar
    provenance: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def diff(self) -> np.ndarray:
        return self.acc_a - self.acc_b

    @property
    def outside(self) -> np.ndarray | None:
        if self.null is None:
            return None
        return (self.diff < self.null["band_lo"] - BAND_TOL) | (self.diff > self.null["band_hi"] + BAND_TOL)

    def summary(self) -> dict:
        s = {
            "num_examples": len(self.ids),
            "models": {"a": int(self.model_accuracy_a.size), "b": int(self.model_accuracy_b.size)},
            "mean_accuracy": {"a": float(self.model_accuracy_a.mean()), "b": float(self.model_accuracy_b.mean())},
            "mean_abs_per_example_difference": float(np.abs(self.diff).mean()),
            "per_example_accuracy_correlation": _corr(self.acc_a, self.acc_b),
            "kappa": self.kappa,
            "agreement": self.agreement,
        }
        if self.permutation is not None:
            s["permutation_test"] = self.permutation.to_json()
        if self.null is not None:
            n = self.null
            s["null"] = {"side": n["side"], "splits": n["splits"], "half_size": n["half_size"], "band": "95%, of differences / their SD given the pooled accuracy",
                         "z_band": n["z_band"],
                         "outside_band": n["outside"], "expected_outside_under_null": n["expected_outside"],
                         "outside_band_p_value": n["outside_test"]["p_value"], "outside_band_test": n["outside_test"],
                         "split_half_outside": n["split_half_outside"],
                         "null_mean_abs_difference": n["mean_abs_difference"],
                         "too_small": n["too_small"], "min_half_size": MIN_NULL_HALF}
        if self.pair is not None:
            s["pair"] = self.pair
        return s

    def to_json(self) -> dict:
        return {"kind": "agreement", "side_a": self.label_a, "side_b": self.label_b, "summary": self.summary(),
                "warnings": self.warnings, "provenance": self.provenance}

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        cols = ["id", "label", "accuracy_a", "accuracy_b", "difference"]
        if self.null is not None:
            cols += ["null_band_lo", "null_band_hi", "outside_band"]
        w.writerow(cols)
        out = self.outside
        for i, ex in enumerate(self.ids):
            row = [ex, int(self.labels[i]), f"{self.acc_a[i]:.6g}", f"{self.acc_b[i]:.6g}", f"{self.diff[i]:.6g}"]
            if self.null is not None:
                row += [f"{self.null['band_lo'][i]:.6g}", f"{self.null['band_hi'][i]:.6g}", int(out[i])]
            w.writerow(row)
        return buf.getvalue()

    def save(self, out_dir: str | Path) -> list[Path]:
        """``agreement.json`` (summary + provenance) and ``agreement.csv`` (per example), atomically."""
        out_dir = Path(out_dir)
        return [atomic_write_json(out_dir / "agreement.json", self.to_json()), atomic_write_text(out_dir / "agreement.csv", self.to_csv())]


def _corr(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def agreement(a: Side, b: Side, *, splits: int = 1000, permutations: int = 1000, seed: int = 0,
              null_side: str = "auto", settings: dict | None = None) -> AgreementResult:
    """Compare two sides example by example (see the module docstring). Pure computation."""
    check_aligned(a, b)
    ca, cb = a.correct, b.correct
    k = a.num_classes
    rng = np.random.default_rng(seed)
    kappa = {"within_a": stats.pair_summary(stats.kappa_matrix(ca, ca), True) if a.num_models > 1 else None,
             "within_b": stats.pair_summary(stats.kappa_matrix(cb, cb), True) if b.num_models > 1 else None,
             "across": stats.pair_summary(stats.kappa_matrix(ca, cb), False)}
    agree = {"within_a": stats.mean_agreement_within(a.predicted, k), "within_b": stats.mean_agreement_within(b.predicted, k),
             "across": stats.mean_agreement_across(a.predicted, b.predicted, k)}
    warnings = list(dict.fromkeys(a.warnings + b.warnings))
    pair = perm = null = None
    if a.num_models == 1 and b.num_models == 1:
        pair = {"kappa": kappa["across"]["mean"], "agreement": agree["across"],
                "mcnemar": stats.mcnemar_exact(ca[0], cb[0])}
        warnings.append("one model per side: per-example accuracies are 0/1 and there is no population null; "
                        "reporting kappa, agreement and McNemar's exact test")
    nside = null_side_for(a, b, null_side) if pair is None else None
    if nside is not None:
        memb = stats.random_halves(rng, nside.num_models, splits)
        d = stats.half_differences(nside.correct, memb)
        h = nside.num_models // 2
        zlo, zhi, null_out = stats.standardized_band(d, stats.split_sd(nside.correct.mean(0), h, h))
        sd_ab = stats.split_sd((ca.sum(0) + cb.sum(0)) / (a.num_models + b.num_models), a.num_models, b.num_models)
        lo, hi = zlo * sd_ab, zhi * sd_ab
        first = memb[0]
        null = {"side": nside.label, "splits": splits, "half_size": h, "band_lo": lo, "band_hi": hi, "z_band": [zlo, zhi],
                "split_half_outside": float(null_out.mean()), "mean_abs_difference": float(np.abs(d).mean()),
                "example_a": nside.correct[first == 1].mean(0), "example_b": nside.correct[first == -1].mean(0),
                "example_split": example_split(nside, first)}
        small = small_null_warning(nside.label, nside.num_models, h)
        null["too_small"] = small is not None
        if small:
            warnings.append(small)
    elif pair is None:
        warnings.append("no side has 2 models: no split-half null")
    if pair is None:
        perm = stats.permutation_test(ca, cb, permutations, rng, band=None if null is None else (null["band_lo"], null["band_hi"]),
                                      tol=BAND_TOL)
        if a.num_models + b.num_models < 6:
            warnings.append(f"only {a.num_models + b.num_models} models in all: the permutation p-value cannot get small")
    if null is not None:
        null |= {"outside": perm.outside.observed, "expected_outside": float(perm.outside.null.mean()),
                 "outside_test": perm.outside.to_json()}
    result = AgreementResult(
        a.label, b.label, list(a.ids), a.labels, ca.mean(0), cb.mean(0), ca.mean(1), cb.mean(1), kappa, agree, perm, null, pair,
        warnings=warnings,
    )
    result.provenance = comparison_provenance(
        "agreement", a, b, seed=seed, null=null,
        settings={"splits": splits, "permutations": permutations, "null_side": null_side, "band_level": 0.95, **(settings or {})},
    )
    return result
