"""Population statistics against independent computations, and on synthetic populations whose truth is known."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import cohen_kappa_score

from hubcompare.errors import DatasetMismatchError, TooFewModelsError
from hubcompare.populations import stats
from hubcompare.populations.agreement import agreement
from hubcompare.populations.classdiff import class_diff
from hubcompare.populations.nulls import MIN_NULL_HALF, distinct_splits
from hubcompare.populations.plots import plot_agreement, plot_class_diff
from hubcompare.populations.sides import Side
from hubcompare.populations.synthetic import synthetic_labels, synthetic_pair, synthetic_side

K = 10


def _pops(seed, models=10, n=2000, shift_b=None, reshuffle_b=False):
    rng = np.random.default_rng(seed)
    labels, ease = synthetic_labels(n, K, rng)
    a = synthetic_side("A", models, labels, ease, rng, K)
    ease_b = ease
    if reshuffle_b:  # same difficulties per class, assigned to other examples: equal class accuracy, different examples
        ease_b = ease.copy()
        for k in range(K):
            idx = np.flatnonzero(labels == k)
            ease_b[idx] = ease[rng.permutation(idx)]
    b = synthetic_side("B", models, labels, ease_b, rng, K, class_shift=shift_b)
    return a, b


def test_kappa_and_agreement_match_independent_computations():
    rng = np.random.default_rng(1)
    ca, cb = rng.random((4, 300)) < 0.7, rng.random((3, 300)) < 0.6
    km = stats.kappa_matrix(ca, cb)
    for i in range(4):
        for j in range(3):
            p1, p2 = ca[i].mean(), cb[j].mean()
            c_obs = (ca[i] == cb[j]).mean()
            c_exp = p1 * p2 + (1 - p1) * (1 - p2)
            assert km[i, j] == pytest.approx((c_obs - c_exp) / (1 - c_exp), abs=1e-10)
            assert km[i, j] == pytest.approx(cohen_kappa_score(ca[i], cb[j]), abs=1e-10)
    assert np.isnan(stats.kappa_matrix(np.ones((1, 5), bool), np.ones((1, 5), bool))[0, 0])  # always right: undefined

    pa, pb = rng.integers(0, 4, (3, 50)), rng.integers(0, 4, (5, 50))
    across = np.mean([(pa[i] == pb[j]).mean() for i in range(3) for j in range(5)])
    within = np.mean([(pa[i] == pa[j]).mean() for i in range(3) for j in range(3) if i != j])
    assert stats.mean_agreement_across(pa, pb, 4) == pytest.approx(across, abs=1e-12)
    assert stats.mean_agreement_within(pa, 4) == pytest.approx(within, abs=1e-12)


def test_mcnemar_exact_is_the_two_sided_binomial_on_discordant_pairs():
    ca = np.array([1] * 30 + [0] * 5 + [1] * 40 + [0] * 25, bool)
    cb = np.array([0] * 30 + [1] * 5 + [1] * 40 + [0] * 25, bool)
    r = stats.mcnemar_exact(ca, cb)
    b, c = 30, 5
    n = b + c
    hand = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n)
    assert (r["a_right_b_wrong"], r["a_wrong_b_right"]) == (b, c)
    assert r["p_value"] == pytest.approx(hand, rel=1e-10)
    assert stats.mcnemar_exact(ca, ca)["p_value"] == 1.0


def test_welch_matches_scipy_and_the_welch_satterthwaite_formulas():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.8, 0.02, (7, 6)), rng.normal(0.79, 0.05, (5, 6))
    w = stats.welch(a, b, confidence=0.9)
    for k in range(6):
        ref = sps.ttest_ind(a[:, k], b[:, k], equal_var=False)
        va, vb = a[:, k].var(ddof=1) / 7, b[:, k].var(ddof=1) / 5
        df = (va + vb) ** 2 / (va ** 2 / 6 + vb ** 2 / 4)
        assert w.t[k] == pytest.approx(ref.statistic, abs=1e-10)
        assert w.p[k] == pytest.approx(ref.pvalue, abs=1e-10)
        assert w.df[k] == pytest.approx(df, abs=1e-10)
        assert w.diff[k] == pytest.approx(a[:, k].mean() - b[:, k].mean(), abs=1e-12)
        ci = ref.confidence_interval(0.9)
        assert (w.ci_lo[k], w.ci_hi[k]) == (pytest.approx(ci.low, abs=1e-10), pytest.approx(ci.high, abs=1e-10))

    # the vectorised split-half version agrees with scipy on every split
    x = rng.normal(0.7, 0.03, (9, 4))
    memb = stats.random_halves(np.random.default_rng(0), 9, 5)
    diff, p, half = stats.welch_halves(x, memb, confidence=0.95)
    for s in range(5):
        h1, h2 = x[memb[s] == 1], x[memb[s] == -1]
        assert len(h1) == len(h2) == 4 and not set(np.flatnonzero(memb[s] == 1)) & set(np.flatnonzero(memb[s] == -1))
        ref = sps.ttest_ind(h1, h2, axis=0, equal_var=False)
        assert np.allclose(p[s], ref.pvalue, atol=1e-10, rtol=0)
        assert np.allclose(diff[s], h1.mean(0) - h2.mean(0), atol=1e-12, rtol=0)
        ci = ref.confidence_interval(0.95)
        assert np.allclose(half[s], (ci.high - ci.low) / 2, atol=1e-10, rtol=0)


def test_bh_qvalues_match_scipy_and_the_step_up_definition():
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(0, 1, 20), [1e-5, 0.001, 0.2, 0.2]])
    q = stats.bh_qvalues(p)
    assert np.allclose(q, sps.false_discovery_control(p, method="bh"), atol=1e-12, rtol=0)
    m = len(p)
    hand = [min(1.0, min(m * p[j] / (np.sum(p <= p[j])) for j in range(m) if p[j] >= p[i])) for i in range(m)]
    assert np.allclose(q, hand, atol=1e-12)
    with_nan = stats.bh_qvalues(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(with_nan[1]) and np.allclose(with_nan[[0, 2]], sps.false_discovery_control([0.01, 0.04]))
    rows = rng.uniform(0, 0.2, (6, 8))
    rows[2, 3] = np.nan
    qr = stats.bh_qvalues_rows(rows)
    for i in range(6):
        assert np.allclose(qr[i], stats.bh_qvalues(rows[i]), equal_nan=True)


def test_split_half_null_band_and_permutation_statistic():
    rng = np.random.default_rng(4)
    c = rng.random((10, 200)) < 0.7
    memb = stats.random_halves(rng, 10, 300)
    d = stats.half_differences(c, memb)
    for s in (0, 123, 299):
        assert np.allclose(d[s], c[memb[s] == 1].mean(0) - c[memb[s] == -1].mean(0), atol=1e-6)
    # the SD that standardises differences is the hypergeometric one (scipy), given the pooled accuracy
    for p, ma, mb in ((0.3, 4, 6), (0.9, 5, 5), (0.5, 3, 7)):
        m = ma + mb
        var_x = sps.hypergeom(m, round(p * m), ma).var()  # models right among A's ma
        assert stats.split_sd(np.array([p]), ma, mb)[0] == pytest.approx(np.sqrt(var_x) * (1 / ma + 1 / mb), abs=1e-10)
    assert stats.split_sd(np.array([1.0, 0.0]), 3, 7).tolist() == [0.0, 0.0]  # everyone right: no variation
    sd = stats.split_sd(c.mean(0), 5, 5)
    lo, hi, out = stats.standardized_band(d, sd)
    z = (d[:, sd > 0] / sd[sd > 0]).ravel()
    assert (lo, hi) == (pytest.approx(np.quantile(z, 0.025), abs=1e-5), pytest.approx(np.quantile(z, 0.975), abs=1e-5))
    assert out.sum() == ((z < lo - 1e-5) | (z > hi + 1e-5)).sum() and out.mean() / 200 <= 0.05

    ca, cb = c[:4], c[4:]
    t = stats.permutation_test(ca, cb, 50, np.random.default_rng(9))
    assert t.observed == pytest.approx(((ca.mean(0) - cb.mean(0)) ** 2).mean(), abs=1e-12)
    labels = stats.random_relabelings(np.random.default_rng(9), 10, 4, 50)  # the same draws
    pooled = np.concatenate([ca, cb])
    hand = [((pooled[lab].mean(0) - pooled[~lab].mean(0)) ** 2).mean() for lab in labels]
    assert np.allclose(t.null, hand, atol=1e-12)
    assert t.p_value == (1 + sum(h >= t.observed - 1e-15 for h in hand)) / 51


def test_class_accuracy_per_model():
    labels = np.array([0, 0, 1, 1, 1, 2])
    correct = np.array([[1, 0, 1, 1, 0, 1], [0, 0, 1, 1, 1, 0]], bool)
    assert np.allclose(stats.class_accuracy(correct, labels, 4)[:, :3], [[0.5, 2 / 3, 1], [0, 1, 0]])
    assert np.isnan(stats.class_accuracy(correct, labels, 4)[:, 3]).all()


def test_same_difficulty_gives_no_differences_beyond_chance():
    # class-diff: BH keeps P(any significant class | nothing differs) <= 0.05 per replicate
    reps, any_sig, null_any = 40, 0, []
    for seed in range(reps):
        a, b = _pops(100 + seed, n=1000)
        cd = class_diff(a, b, splits=100, seed=seed)
        any_sig += bool(cd.significant.any())
        null_any.append(cd.summary()["null"]["share_of_splits_with_any_significant"])
    assert any_sig <= 6  # expected 2; P(> 6) < 0.5% under Binomial(40, 0.05)
    assert np.mean(null_any) < 0.1  # the split-half null is calibrated the same way

    # agreement: a permutation p-value that is not small, and no more examples outside the band than the null has
    perm_p, outside, expected, split_half = [], 0, 0.0, 0.0
    for seed in range(8):
        a, b = _pops(500 + seed)
        ag = agreement(a, b, splits=200, permutations=200, seed=seed)
        perm_p.append(ag.permutation.p_value)
        outside += ag.null["outside"]
        expected += ag.null["expected_outside"]
        split_half += ag.null["split_half_outside"]
    assert sum(p < 0.05 for p in perm_p) <= 2 and np.mean(perm_p) > 0.2
    assert abs(outside / expected - 1) < 0.15  # the count to expect is measured at the sides' sizes (see the next test)
    assert split_half / (8 * 2000) < 0.05  # the band is the halves' 95%: at most 5% of their own examples outside


def test_outside_band_count_is_calibrated_on_null_data_and_detects_a_planted_difference():
    """Issue #15. On sides drawn from one population the count of examples outside the null's band
    averages what the null says to expect (relabellings at the sides' sizes), and its p-value is not
    small more often than its level; the halves' own count (what was reported before) runs far below.
    30 draws per size, 500 examples: the mean count's standard error is ~3% of it; tolerance 12%."""
    sides = {3: "halves of 1", 6: "halves of 3", 10: "halves of 5"}
    p_values = []
    for models in sides:
        observed, expected, halves = [], [], []
        for draw in range(30):
            a, b = synthetic_pair(models, models, 500, K, 10_000 * models + draw)
            ag = agreement(a, b, splits=50, permutations=200, seed=draw)
            n = ag.null
            assert n["outside"] == int(ag.outside.sum()) == ag.summary()["null"]["outside_band"]  # one count, CSV and JSON
            test = ag.summary()["null"]["outside_band_test"]
            assert test["observed"] == n["outside"] and test["null_mean"] == n["expected_outside"] and test["permutations"] == 200
            observed.append(n["outside"])
            expected.append(n["expected_outside"])
            halves.append(n["split_half_outside"])
            p_values.append(n["outside_test"]["p_value"])
        ratio = sum(observed) / sum(expected)
        assert abs(ratio - 1) < 0.12, (models, ratio)
        assert sum(halves) < 0.6 * sum(observed), (models, sides[models])  # the old expectation: 0 at halves of 1
    p_values = np.array(p_values)
    assert (p_values <= 0.05).sum() <= 9 and p_values.mean() > 0.4  # 90 draws: 4.5 expected; P(>= 10) < 2%

    for draw in range(3):  # half of each class's examples trade difficulty in B: a per-example difference
        a, b = synthetic_pair(10, 10, 500, K, 77 + draw, reshuffle=0.5)
        ag = agreement(a, b, splits=50, permutations=200, seed=draw)
        assert ag.null["outside_test"]["p_value"] == 1 / 201 and ag.null["outside"] > 1.5 * ag.null["expected_outside"]


def test_class_diff_on_zero_variance_classes_gives_our_warning_not_scipys():
    """Issue #14: scipy's 'catastrophic cancellation' RuntimeWarning does not escape; hubcompare's own words do."""
    a, b = synthetic_pair(6, 5, 400, K, 21)
    three, five = a.labels == 3, a.labels == 5
    for side in (a, b):
        side.predicted[:, three] = side.labels[three]  # every model right on class 3: zero variance on both sides
    a.predicted[:, five] = (a.labels[five] + 1) % K  # every model of A wrong on class 5, B's vary: zero variance on one side
    assert b.correct[:, b.labels == 5].mean(1).std() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cd = class_diff(a, b, splits=50)
    assert np.isnan(cd.welch.p[3]) and not cd.significant[3] and np.isfinite(cd.welch.p[5])
    assert any(w.startswith("1 class(es) have zero variance on both sides") for w in cd.warnings)
    assert any(w.startswith("1 class(es) have zero variance on one side only") for w in cd.warnings)
    row = next(r for r in cd.to_json()["classes"] if r["index"] == 3)
    assert row["p"] is None and row["q"] is None and row["significant"] is False


def test_planted_class_differences_are_recovered_exactly():
    planted = {2: 0.7, 7: -0.7}
    for seed in range(3):
        a, b = _pops(200 + seed, shift_b=planted)
        cd = class_diff(a, b, splits=200, seed=seed)
        assert set(np.flatnonzero(cd.significant)) == set(planted)
        assert cd.welch.diff[2] < 0 < cd.welch.diff[7]  # A - B: B was made better on 2, worse on 7
        for k in planted:
            assert not cd.null["band_lo"][k] <= cd.welch.diff[k] <= cd.null["band_hi"][k]
        # the planted classes lead the table, in order of p; which of the two comes first is sampling noise
        # (equal and opposite shifts), so either order is right
        top = cd.rows()[:2]
        assert sorted(r["index"] for r in top) == [2, 7] and top[0]["p"] <= top[1]["p"]


def test_planted_per_example_differences_at_equal_class_accuracy():
    a, b = _pops(300, reshuffle_b=True)
    ag = agreement(a, b, splits=200, permutations=200, seed=0)
    assert ag.permutation.p_value == 1 / 201
    assert ag.null["outside"] > 5 * ag.null["expected_outside"]
    assert ag.kappa["across"]["mean"] < 0.5 * ag.kappa["within_a"]["mean"]
    cd = class_diff(a, b, splits=200, seed=0)
    assert cd.significant.sum() <= 1  # the classes are equally hard for both


def test_two_single_models_get_kappa_agreement_and_mcnemar():
    a, b = _pops(5, models=1)
    ag = agreement(a, b)
    ca, cb = a.correct[0], b.correct[0]
    assert ag.permutation is None and ag.null is None
    assert ag.pair["kappa"] == pytest.approx(cohen_kappa_score(ca, cb), abs=1e-10)
    assert ag.pair["agreement"] == pytest.approx((a.predicted[0] == b.predicted[0]).mean())
    assert ag.pair["mcnemar"]["p_value"] == pytest.approx(sps.binomtest(int((ca & ~cb).sum()), int((ca != cb).sum())).pvalue)


def test_errors_mismatched_data_and_too_few_models():
    a, b = _pops(6, models=3)
    other = Side.from_arrays("C", b.predicted, b.labels, b.classes, dataset=dict(b.dataset, fingerprint="0123456789abcdef"))
    with pytest.raises(DatasetMismatchError, match="fingerprints differ.*Pass a dataset") as err:
        agreement(a, other)
    assert err.value.params == ("dataset", "data_dir")  # the CLI names its --dataset/--data-dir from these
    shuffled = Side.from_arrays("D", b.predicted, b.labels, b.classes, ids=[f"x{i}" for i in range(len(b.ids))], dataset=b.dataset)
    with pytest.raises(DatasetMismatchError, match="example ids or labels differ"):
        class_diff(a, shuffled)
    single = Side.from_arrays("E", b.predicted[:1], b.labels, b.classes, ids=b.ids, dataset=b.dataset)
    with pytest.raises(TooFewModelsError, match="at least 2 models per side.*side E has 1"):
        class_diff(a, single)
    with pytest.raises(TooFewModelsError, match="side E has 1 model"):
        agreement(a, single, null_side="b")


def test_distinct_splits_counts_every_pair_of_disjoint_halves():
    from itertools import combinations

    for m in range(2, 9):
        h = m // 2
        pairs = {frozenset((a, b)) for a in combinations(range(m), h)
                 for b in combinations(sorted(set(range(m)) - set(a)), h)}
        assert distinct_splits(m, h) == len(pairs)
    assert (distinct_splits(8, 4), distinct_splits(10, 5)) == (35, 126)  # the threshold's reason (nulls.MIN_NULL_HALF)


def test_a_null_too_small_to_carry_weight_is_said_plainly():
    small = "too small to carry weight"
    for models, half in ((3, 1), (6, 3), (2 * MIN_NULL_HALF - 1, MIN_NULL_HALF - 1)):
        a, b = _pops(11, models=models, n=400)
        ag = agreement(a, b, splits=50, permutations=50)
        assert ag.null["half_size"] == half and ag.summary()["null"]["too_small"] is True
        assert [w for w in ag.warnings if small in w] == [next(w for w in ag.warnings if small in w)]  # once
        assert f"halves hold {half} model(s)" in next(w for w in ag.warnings if small in w)
        if half >= 2:
            cd = class_diff(a, b, splits=50)
            assert cd.summary()["null"]["too_small"] is True and any(small in w for w in cd.warnings)
    for models in (2 * MIN_NULL_HALF, 20):
        a, b = _pops(12, models=models, n=400)
        ag, cd = agreement(a, b, splits=50, permutations=50), class_diff(a, b, splits=50)
        assert ag.summary()["null"]["too_small"] is False and cd.summary()["null"]["too_small"] is False
        assert not any(small in w for w in ag.warnings + cd.warnings)


@pytest.mark.parametrize("models", [1, 3, 20])
def test_figures_are_written_at_every_size(models, tmp_path):
    a, b = _pops(13, models=models, n=500, shift_b={3: -1.0})
    ag = agreement(a, b, splits=50, permutations=50)
    png = plot_agreement(ag, tmp_path / "agreement.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    if models >= 2:
        png = plot_class_diff(class_diff(a, b, splits=50), tmp_path / "class_diff.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_populations_that_agree_on_every_example_get_an_empty_band_not_a_crash():
    """Every model predicts the same labels (the SD of every example is 0): no split-half difference, nothing outside."""
    rng = np.random.default_rng(5)
    labels, _ = synthetic_labels(200, K, rng)
    predicted = np.where(rng.random(200) < 0.7, labels, (labels + 1) % K)
    same = np.repeat(predicted[None, :], 6, axis=0)
    meta = {"name": "synthetic", "split": "test", "num_examples": 200, "num_classes": K, "fingerprint": "synthetic"}
    a = Side.from_arrays("A", same, labels, classes=[f"class{k}" for k in range(K)], dataset=meta)
    b = Side.from_arrays("B", same.copy(), labels, classes=[f"class{k}" for k in range(K)], dataset=meta)
    lo, hi, out = stats.standardized_band(np.zeros((5, 200)), np.zeros(200))
    assert (lo, hi) == (0.0, 0.0) and out.tolist() == [0] * 5
    r = agreement(a, b, splits=20, permutations=20, seed=0)
    s = r.summary()
    assert s["null"]["z_band"] == [0.0, 0.0] and s["null"]["split_half_outside"] == 0.0
