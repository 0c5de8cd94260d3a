"""Every similarity measure against an independent float64 implementation on the same features (rsatoolbox for RSA,
scipy's orthogonal Procrustes and a direct SVD for Procrustes, numpy/scipy written here for the rest), in the
engine's streaming pass (one batch holding every example = the full-data value; several = the batch-size-weighted
mean with its jackknife SE), and the errors a user sees."""

import numpy as np
import pytest
import torch
from helpers import ref_hsic1, toy_dataset
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.distance import pdist, squareform

import hubcompare  # noqa: F401
from hubcompare.errors import CompareError, MeasureError
from hubcompare.models.resnet import CifarResNet
from hubcompare.similarity.batchplan import choose_batch_plan
from hubcompare.similarity.engine import CompareModel, compare, minibatch_plan
from hubcompare.similarity.measures import LayerInputs, make_measure, measure_names, parse_measures
from hubcompare.similarity.measures.base import example_stats

rsatoolbox = pytest.importorskip("rsatoolbox", reason="the RSA reference: pip install 'hubcompare[test]'")


# ---- independent references: float64 numpy/scipy, from the features themselves (no Grams) -------------------
def ref_rbf_kernel(X, frac):
    d = pdist(X)  # i < j
    sigma = frac * np.median(d)
    return np.exp(-squareform(d) ** 2 / (2 * sigma**2))


def ref_rbf_cka(X, Y, frac=0.8):
    K, L = ref_rbf_kernel(X, frac), ref_rbf_kernel(Y, frac)
    return ref_hsic1(K, L) / np.sqrt(ref_hsic1(K, K) * ref_hsic1(L, L))


def ref_rsa(X, Y):
    rdms = [rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(Z), method="correlation") for Z in (X, Y)]
    return float(rsatoolbox.rdm.compare(rdms[0], rdms[1], method="spearman")[0, 0])


def ref_mknn(X, Y, k=10):
    def knn(Z):
        d = squareform(pdist(Z))
        np.fill_diagonal(d, np.inf)
        return [set(np.argsort(row, kind="stable")[:k]) for row in d]

    return float(np.mean([len(a & b) / k for a, b in zip(knn(X), knn(Y))]))


def ref_procrustes(X, Y):
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Xc, Yc = Xc / np.linalg.norm(Xc), Yc / np.linalg.norm(Yc)
    direct = np.linalg.svd(Xc.T @ Yc, compute_uv=False).sum()
    if Xc.shape[1] == Yc.shape[1]:  # scipy's solver returns the same nuclear norm as its "scale"
        assert abs(orthogonal_procrustes(Xc, Yc)[1] - direct) < 1e-10
    return direct


def reduced(X, keep):
    """Xc's coordinates on its top principal directions explaining ``keep`` of its variance (numpy SVD)."""
    U, S, _ = np.linalg.svd(X - X.mean(0), full_matrices=False)
    S = S[S > S[0] * 1e-7]  # the numerical rank of float32-made features
    k = min(int(np.searchsorted(np.cumsum(S**2) / np.sum(S**2), keep)) + 1, len(S))
    return U[:, :k] * S[:k]


def canonical_correlations(A, B):
    """CCA of two full-column-rank, centred matrices: the singular values of Q_A^T Q_B (QR bases)."""
    return np.linalg.svd(np.linalg.qr(A)[0].T @ np.linalg.qr(B)[0], compute_uv=False)


def ref_svcca(X, Y, keep=0.99):
    return float(np.mean(canonical_correlations(reduced(X, keep), reduced(Y, keep))))


def ref_pwcca(X, Y):
    """Morcos, Raghu & Bengio's definition: CCA by whitening (Sigma_xx^-1/2 Sigma_xy Sigma_yy^-1/2, on each layer's
    principal coordinates so that a rank-deficient layer has an inverse), canonical variates h_i = X Sigma_xx^-1/2 u_i,
    weights alpha_i = sum_j |<h_i, x_j>| over X's neurons (the centred columns), normalised; sum_i alpha_i rho_i.
    (Not google/svcca's pwcca.py, which projects with u alone and weighs by the other layer's activations.)"""
    Xc = X - X.mean(0)
    A, B = reduced(X, 1.0), reduced(Y, 1.0)

    def inv_sqrt(S):
        w, V = np.linalg.eigh(S)
        return V @ np.diag(w**-0.5) @ V.T

    Wa, Wb = inv_sqrt(A.T @ A), inv_sqrt(B.T @ B)
    U, rho, _ = np.linalg.svd(Wa @ A.T @ B @ Wb, full_matrices=False)
    H = A @ Wa @ U  # the canonical variates of X, unit norm
    alpha = np.abs(H.T @ Xc).sum(1)
    return float((alpha * np.minimum(rho, 1.0)).sum() / alpha.sum())


def ref_linreg(X, Y):
    """R^2 of the least-squares fit of Y's centred features from X's (numpy lstsq)."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    beta = np.linalg.lstsq(Xc, Yc, rcond=None)[0]
    return 1 - np.sum((Yc - Xc @ beta) ** 2) / np.sum(Yc**2)


REFERENCES = {"rbf-cka": ref_rbf_cka, "rsa": ref_rsa, "mknn": ref_mknn, "procrustes": ref_procrustes,
              "svcca": ref_svcca, "pwcca": ref_pwcca, "linreg": ref_linreg}


def inputs(X):
    x = torch.as_tensor(X, dtype=torch.float64)
    xc = x - x.mean(0)
    return LayerInputs(xc @ xc.T, example_stats(x), xc)


def features(rng, n, p, offset=2.0):
    return np.maximum(rng.standard_normal((n, p)), 0) * 3 + offset  # post-ReLU-like: a common offset


# ---- the measures' functional cores: one batch = the definition ------------------------------------------------
@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("p", [(12, 30), (300, 7)])  # features outnumber examples, and the reverse
def test_each_measure_equals_its_independent_reference_on_one_batch(name, p, rng):
    n = 60
    X = features(rng, n, p[0])
    Y = X[:, : min(p)] @ rng.standard_normal((min(p), p[1])) + 0.5 * features(rng, n, p[1])
    m = make_measure(name)
    h = m.contribution([inputs(X), inputs(Y)])
    acc = m.accumulator(2)
    acc.add(h, n)
    value = m.estimate(acc).value.numpy()
    assert abs(value[0, 1] - REFERENCES[name](X, Y)) < 1e-9, (name, value[0, 1])
    if m.symmetric:
        assert abs(value[1, 0] - value[0, 1]) < 1e-12
    else:
        assert abs(value[1, 0] - REFERENCES[name](Y, X)) < 1e-9
    assert abs(value[0, 0] - 1.0) < 1e-9  # a layer against itself


def test_svcca_matches_scikit_learns_cca_on_small_dimensions(rng):
    from sklearn.cross_decomposition import CCA

    n = 200
    X = rng.standard_normal((n, 4))
    Y = X @ rng.standard_normal((4, 3)) + 0.7 * rng.standard_normal((n, 3))
    m = make_measure("svcca", keep=1.0)  # every direction: plain CCA
    acc = m.accumulator(2)
    acc.add(m.contribution([inputs(X), inputs(Y)]), n)
    xs, ys = CCA(n_components=3, scale=False, max_iter=5000, tol=1e-12).fit(X, Y).transform(X, Y)
    sk = np.mean([abs(np.corrcoef(xs[:, c], ys[:, c])[0, 1]) for c in range(3)])
    assert abs(m.estimate(acc).value[0, 1].item() - sk) < 1e-6


def test_example_centred_gram_is_the_gram_of_the_examples_centred_on_their_own_means(rng):
    X = features(rng, 40, 25, offset=7.0)
    Xr = X - X.mean(1, keepdims=True)
    assert np.abs(inputs(X).example_centred_gram().numpy() - Xr @ Xr.T).max() < 1e-9 * np.abs(Xr @ Xr.T).max()


def test_rbf_bandwidth_and_mknn_k_are_parameters(rng):
    X, Y = features(rng, 50, 9), features(rng, 50, 9)
    for frac in (0.3, 2.0):
        m = make_measure("rbf-cka", frac=frac)
        acc = m.accumulator(2)
        acc.add(m.contribution([inputs(X), inputs(Y)]), 50)
        assert abs(m.estimate(acc).value[0, 1].item() - ref_rbf_cka(X, Y, frac)) < 1e-9
        assert m.key == f"rbf-cka(frac={frac:g})"
    m = make_measure("mknn", k=3)
    acc = m.accumulator(2)
    acc.add(m.contribution([inputs(X), inputs(Y)]), 50)
    assert abs(m.estimate(acc).value[0, 1].item() - ref_mknn(X, Y, 3)) < 1e-12


# ---- in the engine: real models, one pass, every measure ---------------------------------------------------------
LAYERS = ["stem", "stage1.block1.out", "stage2.block1.out", "pool"]


def make_resnet(seed, width=1):
    torch.manual_seed(seed)
    return CifarResNet(depth=8, width=width, in_chans=1, num_classes=10).eval()


def activations(model, ds):
    with torch.no_grad():
        acts = model.forward_taps(ds.images.float() / 255, LAYERS)
    return [acts[n].reshape(len(ds), -1).double().numpy() for n in LAYERS]


def test_compare_computes_every_measure_in_one_pass_as_defined():
    ds = toy_dataset(120, size=6)  # small layers: the references' SVDs stay quick
    a, b = make_resnet(0), make_resnet(1, width=2)
    models = [CompareModel("A", a, layers=LAYERS), CompareModel("B", b, layers=LAYERS)]
    comp = compare(models, ds, batch_size=120, measures=parse_measures(["all"]))
    xa, xb = activations(a, ds), activations(b, ds)
    assert list(comp.measures) == ["cka", "rbf-cka(frac=0.8)", "rsa", "mknn(k=10)", "procrustes", "svcca(keep=0.99)",
                                   "pwcca", "linreg"]
    for key, m in comp.measure_specs.items():
        if m.name == "cka":
            continue
        value, se = comp.measure_pair(key, 0, 1)
        expected = np.array([[REFERENCES[m.name](x, y) for y in xb] for x in xa])
        tol = 2.5 / (120 * 10) if m.name == "mknn" else 2e-6  # float32 activations: a near-tie may swap one neighbour
        assert np.abs(value - expected).max() < tol, (key, value, expected)
        assert np.isnan(se).all()  # one minibatch: no jackknife
    assert [d["name"] for d in comp.settings["measures"]] == ["cka", "rbf-cka", "rsa", "mknn", "procrustes", "svcca",
                                                              "pwcca", "linreg"]


def test_layer_pairs_give_the_same_bits_on_one_thread_or_several(rng):
    layers = [inputs(features(rng, 70, p)) for p in (5, 40, 90, 90)]
    layers.insert(2, inputs(np.ones((70, 3))))  # a constant layer: NaN row and column
    threads = torch.get_num_threads()
    got = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            got[t] = [make_measure(name).contribution(layers) for name in ("procrustes", "svcca", "linreg")]
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(got[1], got[2]):
        assert torch.equal(one.isnan(), two.isnan()) and torch.equal(one.nan_to_num(), two.nan_to_num())
    procrustes = got[2][0] / 70
    assert procrustes.diagonal()[[0, 1, 3, 4]].tolist() == [1.0] * 4 and procrustes[2].isnan().all()


def test_measures_across_models_only_skip_no_reported_pair():
    ds = toy_dataset(96)
    models = [CompareModel("A", make_resnet(0), layers=LAYERS), CompareModel("B", make_resnet(1, width=2), layers=LAYERS)]
    chosen = parse_measures(["procrustes", "mknn", "pwcca", "rbf-cka"])
    full = compare(models, ds, batch_size=48, seed=3, measures=chosen)
    across = compare(models, ds, batch_size=48, seed=3, measures=chosen, measure_pairs="across")
    assert across.settings["measure_pairs"] == "across"
    for key in full.measures:
        for got, want in zip(across.measure_pair(key, 0, 1), full.measure_pair(key, 0, 1)):
            assert np.array_equal(got, want, equal_nan=True), key  # the same bits where both compute
        if key != "cka":
            assert np.array_equal(across.measures[key].value.diagonal(), full.measures[key].value.diagonal()), key
            assert across.measures[key].value[0, 1].isnan() and not full.measures[key].value[0, 1].isnan(), key
            with pytest.raises(CompareError, match="across models only.*measure_pairs='all'"):
                across.measure_pair(key, 1, 1)
    with pytest.raises(CompareError, match="measure_pairs must be one of"):
        compare(models, ds, batch_size=48, measures=chosen, measure_pairs="within")


def test_linear_cka_is_bit_identical_with_or_without_other_measures():
    ds = toy_dataset(96)
    a, b = make_resnet(0), make_resnet(1)
    models = [CompareModel("A", a, layers=LAYERS), CompareModel("B", b, layers=LAYERS)]
    alone = compare(models, ds, batch_size=32, passes=2, seed=3)
    together = compare(models, ds, batch_size=32, passes=2, seed=3, measures=parse_measures(["cka", "rsa", "procrustes"]))
    assert np.array_equal(alone.value, together.value) and np.array_equal(alone.se, together.se, equal_nan=True)
    assert np.array_equal(together.measures["cka"].value.numpy(), together.value)


def test_several_minibatches_give_the_weighted_mean_and_its_jackknife():
    ds = toy_dataset(100)
    a, b = make_resnet(0), make_resnet(2)
    models = [CompareModel("A", a, layers=LAYERS[-2:]), CompareModel("B", b, layers=LAYERS[-2:])]
    comp = compare(models, ds, batch_size=40, seed=5, measures=parse_measures(["procrustes"]))
    plan = minibatch_plan(100, 40, seed=5)
    sizes = np.array([len(mb.indices) for mb in plan])
    assert sizes.tolist() == [40, 40, 20]  # unequal batches: the weights matter
    xa, xb = (activations(m, ds)[-2:] for m in (a, b))
    per = np.array([ref_procrustes(xa[1][mb.indices.numpy()], xb[1][mb.indices.numpy()]) for mb in plan])
    mean = (per * sizes).sum() / 100
    loo = (mean * 100 - per * sizes) / (100 - sizes)
    se = np.sqrt((len(plan) - 1) / len(plan) * ((loo - loo.mean()) ** 2).sum())
    value, got_se = comp.measure_pair("procrustes", 0, 1)
    assert abs(value[1, 1] - mean) < 1e-6 and abs(got_se[1, 1] - se) < 1e-6
    angular = comp.measure_specs["procrustes"].derived(comp.measures["procrustes"].value)["angular_distance"]
    assert abs(angular.numpy()[0, 3] - np.arccos(comp.measures["procrustes"].value.numpy()[0, 3])) < 1e-12


def test_a_constant_layer_gets_nan_and_a_warning_for_every_measure():
    ds = toy_dataset(64)
    a = make_resnet(0)
    with torch.no_grad():
        a.stem.conv.weight.zero_()
        a.stem.bn.weight.zero_()
        a.stem.bn.bias.zero_()
    comp = compare([CompareModel("A", a, layers=LAYERS), CompareModel("B", make_resnet(1), layers=LAYERS)], ds,
                   batch_size=64, measures=parse_measures(["rbf-cka", "procrustes", "rsa"]))
    for key in ("rbf-cka(frac=0.8)", "procrustes", "rsa"):  # a zero stem makes every later layer constant too
        assert np.isnan(comp.measure_pair(key, 0, 1)[0]).all() and np.isfinite(comp.measure_pair(key, 1, 1)[0]).all(), key
    assert any("A: layer stem is constant" in w for w in comp.warnings)  # CKA's warning names the layer once


# ---- errors a user sees ---------------------------------------------------------------------------------------
def test_unknown_measures_and_parameters_are_typed_errors_naming_the_fix():
    with pytest.raises(MeasureError, match="not a measure: choose from cka, rbf-cka, rsa, mknn, procrustes, svcca, pwcca, linreg"):
        parse_measures(["cca"])
    with pytest.raises(MeasureError, match=r"frac = -1 is out of range: give a number in \[0.01, 100\]"):
        make_measure("rbf-cka", frac=-1)
    with pytest.raises(MeasureError, match="whole number"):
        make_measure("mknn", k=2.5)
    with pytest.raises(MeasureError, match="has no parameter 'sigma'"):
        make_measure("rbf-cka", sigma=1.0)
    with pytest.raises(MeasureError, match="not among the chosen measures"):
        parse_measures(["cka"], {"mknn": {"k": 5}})
    assert measure_names() == ["cka", "rbf-cka", "rsa", "mknn", "procrustes", "svcca", "pwcca", "linreg"]
    assert [m.name for m in parse_measures(["mknn", "all", "mknn"])] == ["mknn", "cka", "rbf-cka", "rsa", "procrustes",
                                                                         "svcca", "pwcca", "linreg"]


def test_mknn_refuses_minibatches_no_larger_than_k():
    ds = toy_dataset(40)
    with pytest.raises(CompareError, match="needs minibatches of more than k examples"):
        compare([CompareModel("A", make_resnet(0), layers=LAYERS)], ds, batch_size=8,
                measures=parse_measures(["mknn"]))
    # 16 + 16 + 8: the last 8 are too few for k = 10, so they join the minibatch before (16 + 24), and the plan the
    # CLI records counts the same two
    comp = compare([CompareModel("A", make_resnet(0), layers=LAYERS)], ds, batch_size=16, measures=parse_measures(["mknn"]))
    assert comp.settings["num_batches"] == 2 == choose_batch_plan(40, 16, 1, make_measure("mknn").smallest_batch()).num_batches
    assert [len(mb.indices) for mb in minibatch_plan(40, 16, 1, 0, 11)] == [16, 24]
    assert choose_batch_plan(40, 16).num_batches == 3  # linear CKA alone keeps the 8
    with pytest.raises(CompareError, match="the pass has only 8 examples"):
        compare([CompareModel("A", make_resnet(0), layers=LAYERS)], toy_dataset(8), batch_size=16,
                measures=parse_measures(["mknn"]))


# ---- the command line: `hubcompare compare A B --measure ...` on digits equals the definitions ----------------------
@pytest.fixture(scope="module")
def second_run(tmp_path_factory):
    from helpers import small_recipe

    from hubcompare.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "digits-r8-w2"
    train(small_recipe(**{"model.width": 2, "train.seed": 1, "train.epochs": 3}), out)
    return out


def test_cli_compare_on_digits_equals_the_definitions_in_float64(trained_run, second_run, tmp_path):
    import json

    from helpers import own_home_env
    from typer.testing import CliRunner

    from hubcompare.cli.main import app
    from hubcompare.data.datasets import load_dataset
    from hubcompare.hub.references import resolve_reference
    from hubcompare.models.inputs import InputSpec

    names = ["stem", "stage2.block1.out", "pool", "logits"]
    args = ["compare", str(trained_run), str(second_run), "--batch-size", "500", "--measure", "rsa", "--measure",
            "procrustes", "--measure", "rbf-cka", "--measure", "mknn", "--out", str(tmp_path / "out"), "--json",
            *[x for n in names for x in ("--layers", n)]]
    r = CliRunner().invoke(app, args, env=own_home_env(tmp_path))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert list(doc["measures"]) == ["rsa", "procrustes", "rbf-cka", "mknn"]
    assert doc["measures"]["rbf-cka"]["params"] == {"frac": 0.8} and doc["measures"]["mknn"]["params"] == {"k": 10}
    assert json.loads((tmp_path / "out" / "measures.json").read_text())["pairs"][0]["measures"] == doc["measures"]
    assert (tmp_path / "out" / doc["pairs"][0]["figure"].split("/")[-1]).is_file()
    ds = load_dataset("digits", "test")
    assert doc["settings"]["num_batches"] == 1 and doc["settings"]["num_examples"] == len(ds) <= 500  # one batch: exact
    feats = []
    for run in (trained_run, second_run):
        model = resolve_reference(str(run)).model.eval()
        with torch.no_grad():
            acts = model.forward_taps(InputSpec.from_model(model, ds.image_shape)(ds.images), names)
        feats.append([acts[n].reshape(len(ds), -1).double().numpy() for n in names])
    for name, entry in doc["measures"].items():
        assert entry["layers_a"] == entry["layers_b"] == names
        got = np.array(entry["value"], dtype=float)
        expected = np.array([[REFERENCES[name](x, y) for y in feats[1]] for x in feats[0]])
        tol = 2.5 / (len(ds) * 10) if name == "mknn" else 2e-6  # float32 activations: a near-tie may swap a neighbour
        assert np.abs(got - expected).max() < tol, (name, np.abs(got - expected).max())
        assert all(v is None for row in entry["se"] for v in row)  # one minibatch: no jackknife SE
    angular = np.array(doc["measures"]["procrustes"]["angular_distance"])
    assert np.allclose(angular, np.arccos(np.array(doc["measures"]["procrustes"]["value"])))
