"""CKA correctness against an independent float64 implementation written here, and the promised errors."""

import numpy as np
import pytest
import torch
from helpers import ref_hsic1, toy_dataset
from torch import nn

import hubcompare  # noqa: F401
from hubcompare.errors import CompareError, LayerSelectionError
from hubcompare.models.resnet import CifarResNet
from hubcompare.similarity.cka import MinibatchCKA, cka, gram, u_center
from hubcompare.similarity.engine import CompareModel, compare, minibatch_plan


# ---- independent reference: numpy float64, the recipe's three-term formula ------------------
def ref_minibatch_cka(X, Y, batches):
    """sum_b n_b HSIC(K_b, L_b) / sqrt(sum_b n_b HSIC(K_b, K_b) * sum_b n_b HSIC(L_b, L_b)), raw (uncentred) Grams."""
    xy = xx = yy = 0.0
    for idx in batches:
        K = X[idx] @ X[idx].T
        L = Y[idx] @ Y[idx].T
        n = len(idx)
        xy += n * ref_hsic1(K, L)
        xx += n * ref_hsic1(K, K)
        yy += n * ref_hsic1(L, L)
    return xy / np.sqrt(xx * yy)


def stream(xs, batches):
    acc = MinibatchCKA(len(xs))
    for idx in batches:
        acc.update(torch.stack([u_center(gram(torch.as_tensor(x[idx]), torch.float64 if x.dtype == np.float64 else torch.float32)) for x in xs]))
    return acc.compute()


def relu_features(rng, n, p, offset=5.0):
    """Post-ReLU-like activations: large common offset, the case where float32 three-term HSIC loses digits."""
    return (np.maximum(rng.standard_normal((n, p)), 0) * 3 + offset).astype(np.float32)


class Broken(nn.Module):
    """A model whose every output is NaN (its head layer is the first to go non-finite)."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        return self.head((self.conv(x) * float("nan")).mean((2, 3)))


def test_one_batch_equals_direct_formula(rng):
    X, Y = rng.standard_normal((40, 30)), rng.standard_normal((40, 12))
    Y[:, :5] += X[:, :5]
    expected = ref_minibatch_cka(X, Y, [np.arange(40)])
    assert cka(torch.tensor(X), torch.tensor(Y)).item() == pytest.approx(expected, abs=1e-12)
    est = stream([X, Y], [np.arange(40)])
    assert est.value[0, 1].item() == pytest.approx(expected, abs=1e-12)


def test_streaming_float32_agrees_with_float64_reference_to_1e6(rng):
    X = relu_features(rng, 512, 2048)
    Y = (X[:, :1024] @ rng.standard_normal((1024, 700)).astype(np.float32) * 0.05 + relu_features(rng, 512, 700)).astype(np.float32)
    batches = np.array_split(rng.permutation(512), 4)
    expected = ref_minibatch_cka(X.astype(np.float64), Y.astype(np.float64), batches)
    got = stream([X, Y], batches).value[0, 1].item()
    assert abs(got - expected) < 1e-6


def test_short_last_batch_is_weighted_by_its_size(rng):
    X, Y = rng.standard_normal((70, 20)), rng.standard_normal((70, 9))
    Y += X[:, :9]
    batches = [np.arange(0, 32), np.arange(32, 64), np.arange(64, 70)]
    assert stream([X, Y], batches).value[0, 1].item() == pytest.approx(ref_minibatch_cka(X, Y, batches), abs=1e-12)


def test_self_similarity_symmetry_and_invariances(rng):
    X = rng.standard_normal((64, 50))
    Q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    Y = rng.standard_normal((64, 20)) + X[:, :20]
    batches = np.array_split(np.arange(64), 2)
    est = stream([X, X @ Q * 7.5, Y], batches).value.numpy()
    assert est[0, 0] == pytest.approx(1.0, abs=1e-12)
    assert est[0, 1] == pytest.approx(1.0, abs=1e-10)  # orthogonal transform + isotropic scaling
    assert est[0, 2] == pytest.approx(est[1, 2], abs=1e-10)
    assert np.allclose(est, est.T)


def test_jackknife_standard_error_matches_explicit_leave_one_out(rng):
    X, Y = rng.standard_normal((96, 16)), rng.standard_normal((96, 8))
    Y += 0.5 * X[:, :8]
    batches = np.array_split(np.arange(96), 6)
    est = stream([X, Y], batches)
    loo = [ref_minibatch_cka(X, Y, [b for j, b in enumerate(batches) if j != i]) for i in range(6)]
    expected = np.sqrt(5 / 6 * np.sum((np.array(loo) - np.mean(loo)) ** 2))
    assert est.se[0, 1].item() == pytest.approx(expected, rel=1e-9)
    assert est.se[0, 0].item() < 1e-12


def test_negative_batch_hsic_is_not_clamped(rng):
    # unrelated features: per-batch HSIC can be negative; CKA must be able to go below 0
    values = [stream([rng.standard_normal((8, 3)), rng.standard_normal((8, 3))], [np.arange(8)]).value[0, 1].item() for _ in range(20)]
    assert min(values) < 0


def test_minimum_batch_size():
    with pytest.raises(ValueError, match="at least 4"):
        u_center(torch.ones(3, 3))


# ---- the engine on real models ------------------------------------------------------------
def make_resnet(seed, width=1):
    torch.manual_seed(seed)
    return CifarResNet(depth=8, width=width, in_chans=1, num_classes=10).eval()


def activations(model, ds, names):
    with torch.no_grad():
        acts = model.forward_taps(ds.images.float() / 255, names)
    return [acts[n].reshape(len(ds), -1).double().numpy() for n in names]


def test_engine_matches_reference_and_joint_matrix():
    ds = toy_dataset(96)
    a, b = make_resnet(0), make_resnet(1, width=2)
    names = ["stem", "stage1.block1.out", "stage2.block1.out", "stage3.block1.out", "pool"]
    comp = compare([CompareModel("A", a, layers=names), CompareModel("B", b, layers=names)], ds, batch_size=32, passes=2, seed=3)
    # the documented batch plan: one seeded permutation per pass, cut into batch_size chunks
    g = torch.Generator().manual_seed(3)
    batches = [perm[i : i + 32].numpy() for perm in (torch.randperm(96, generator=g) for _ in range(2)) for i in range(0, 96, 32)]
    xa, xb = activations(a, ds, names), activations(b, ds, names)
    cross = comp.pair(0, 1)
    expected = np.array([[ref_minibatch_cka(x, y, batches) for y in xb] for x in xa])
    assert np.abs(cross.value - expected).max() < 1e-6
    # cross matrix = off-diagonal block of the joint within-model matrix of both models
    assert np.array_equal(cross.value, comp.value[:5, 5:])
    within_a = comp.pair(0, 0)
    assert np.allclose(np.diag(within_a.value), 1.0)
    assert np.allclose(within_a.value, within_a.value.T)


def test_self_comparison_diagonal_is_one_with_shuffling():
    ds = toy_dataset(96)
    a = make_resnet(0)
    comp = compare([CompareModel("A", a), CompareModel("A-again", a)], ds, batch_size=16, passes=3, seed=1)
    assert np.allclose(np.diag(comp.pair(0, 1).value), 1.0, atol=1e-12)


def test_bad_inputs_get_clear_errors():
    ds = toy_dataset(96)
    a = make_resnet(0)
    with pytest.raises(CompareError, match="n > 3"):
        compare([CompareModel("A", a)], ds, batch_size=3)
    with pytest.raises(LayerSelectionError, match="match no layer"):
        compare([CompareModel("A", a, layers=["layer9.*"])], ds)

    with pytest.raises(CompareError, match="layer head produced NaN/inf"):
        compare([CompareModel("broken", Broken())], ds, batch_size=32)


def test_head_mismatch_proceeds_on_hidden_layers():
    ds = toy_dataset(96, classes=5)
    a = make_resnet(0)  # 10-class head
    comp = compare([CompareModel("A", a)], ds, batch_size=32)
    assert "logits" not in comp.captures[0].names and "pool" in comp.captures[0].names
    assert any("CKA does not need the head" in w for w in comp.warnings)
    with pytest.raises(CompareError, match="drop 'logits'"):
        compare([CompareModel("A", a, layers=["logits"])], ds, batch_size=32)


def test_constant_layer_is_reported_not_hidden():
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.live = nn.Conv2d(1, 4, 3)
            self.dead = nn.ReLU()

        def forward(self, x):
            h = self.live(x)
            return self.dead(h * 0 - 1).flatten(1)

    comp = compare([CompareModel("dead", Dead(), layers=["live", "dead"])], toy_dataset(96), batch_size=32)
    r = comp.pair(0, 0)
    assert np.isnan(r.value[1]).all() and r.value[0, 0] == pytest.approx(1.0)
    assert any("constant on every example" in w for w in comp.warnings)


def test_timm_model_with_its_own_preprocessing():
    import timm

    ds = toy_dataset(32)
    community = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()  # ImageNet-shaped
    comp = compare([CompareModel("cifar", make_resnet(0)), CompareModel("timm:resnet18", community)], ds, batch_size=16)
    seen = comp.settings["inputs"]["timm:resnet18"]
    assert seen["size"] == (224, 224) and seen["channels"] == 3 and seen["resized"] and seen["channels_adapted"]
    assert comp.settings["inputs"]["cifar"]["resized"] is False
    assert comp.captures[1].names[:2] == ["act1", "layer1"] and "output" not in comp.captures[1].names
    assert np.isfinite(comp.pair(0, 1).value).all()


@pytest.mark.parametrize("n", [5, 63, 130, 250, 256])
def test_gram_is_the_centred_product(n, rng):
    """The blocked, chunked Gram (lower row blocks multiplied, upper ones mirrored) equals centred X X^T for any n."""
    X = relu_features(rng, n, 3000)
    Xc = X.astype(np.float64) - X.astype(np.float64).mean(0)
    expected = Xc @ Xc.T
    got = gram(torch.as_tensor(X).reshape(n, 3, 1000)).numpy()
    assert np.abs(got - expected).max() <= 1e-6 * np.abs(expected).max()
    assert np.allclose(gram(torch.as_tensor(Xc), torch.float64).numpy(), expected, rtol=0, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize("offset", [0.0, 5.0, 50.0])
def test_uncentred_gram_gives_the_same_hsic_to_1e6(offset, rng):
    """gram(centred=False) skips the centred copy only when float32 can afford it: HSIC-based CKA still
    matches the float64 reference to 1e-6, from no offset (raw product) to large ones (centred fallback)."""
    X = relu_features(rng, 256, 4096, offset)
    Y = (X[:, :2048] @ rng.standard_normal((2048, 300)).astype(np.float32) * 0.05 + relu_features(rng, 256, 300, offset))
    Y = Y.astype(np.float32)
    batches = np.array_split(rng.permutation(256), 2)
    expected = ref_minibatch_cka(X.astype(np.float64), Y.astype(np.float64), batches)
    acc = MinibatchCKA(2)
    for idx in batches:
        acc.update(torch.stack([u_center(gram(torch.as_tensor(z[idx]), centred=False)) for z in (X, Y)]))
    assert abs(acc.compute().value[0, 1].item() - expected) < 1e-6
    raw = gram(torch.as_tensor(X), centred=False).double().numpy()
    Xc = X.astype(np.float64) - X.astype(np.float64).mean(0)
    is_centred = np.allclose(raw, Xc @ Xc.T, rtol=0, atol=1e-5 * np.abs(Xc @ Xc.T).max())
    assert is_centred == (offset > 0)  # post-ReLU offset only: raw product kept


def test_minibatch_plan_merges_a_short_tail_and_reshuffles_every_pass():
    plan = minibatch_plan(10, 4, passes=2, seed=0)
    assert [(b.pass_index, b.start, b.stop) for b in plan] == [(0, 0, 4), (0, 4, 10), (1, 0, 4), (1, 4, 10)]
    first, second = torch.cat([b.indices for b in plan[:2]]), torch.cat([b.indices for b in plan[2:]])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(10)) and not torch.equal(first, second)
    assert all(torch.equal(a.indices, b.indices) for a, b in zip(plan, minibatch_plan(10, 4, passes=2, seed=0)))


# ---- the accelerator pipeline (what runs on GPUs), run here on the CPU ----------------------
@pytest.mark.parametrize("products", ["float64", "float32"])
def test_accelerator_pipeline_keeps_the_1e6_bound(products):
    """pipeline="accelerator" (one dense centred Gram per layer, checks read back a batch late, HSIC products in
    float64 or in float32 runs summed in float64) on the CPU: the same reference bound as the CPU pipeline."""
    ds = toy_dataset(96)
    a, b = make_resnet(0), make_resnet(1, width=2)
    names = ["stem", "stage1.block1.out", "stage2.block1.out", "stage3.block1.out", "pool"]
    models = [CompareModel("A", a, layers=names), CompareModel("B", b, layers=names)]
    comp = compare(models, ds, batch_size=32, passes=2, seed=3, device="cpu", pipeline="accelerator", hsic_products=products)
    g = torch.Generator().manual_seed(3)
    batches = [perm[i : i + 32].numpy() for perm in (torch.randperm(96, generator=g) for _ in range(2)) for i in range(0, 96, 32)]
    xa, xb = activations(a, ds, names), activations(b, ds, names)
    expected = np.array([[ref_minibatch_cka(x, y, batches) for y in xb] for x in xa])
    assert np.abs(comp.pair(0, 1).value - expected).max() < 1e-6
    cpu = compare(models, ds, batch_size=32, passes=2, seed=3)
    assert np.abs(comp.value - cpu.value).max() < 1e-7 and np.abs(comp.se - cpu.se).max() < 1e-7
    arithmetic = comp.settings["arithmetic"]
    assert arithmetic["pipeline"] == "accelerator" and arithmetic["hsic_products"].startswith(products)
    assert cpu.settings["arithmetic"]["pipeline"] == "cpu" and cpu.settings["device"]["type"] == "cpu"
    assert comp.pair(0, 1).provenance["device"]["type"] == "cpu"


def test_dense_gram_and_float32_hsic_products_keep_the_1e6_bound_on_offset_features(rng, monkeypatch):
    """The hard case of the float32 test above (post-ReLU offsets, 512 x 2048 features) through the GPU arithmetic:
    gram_dense and float32 HSIC products summed in float64 (with a tiny budget, so many short runs and padding)."""
    from hubcompare.similarity import cka as cka_module
    from hubcompare.similarity.cka import gram_dense

    X = relu_features(rng, 512, 2048)
    Y = (X[:, :1024] @ rng.standard_normal((1024, 700)).astype(np.float32) * 0.05 + relu_features(rng, 512, 700)).astype(np.float32)
    batches = np.array_split(rng.permutation(512), 4)
    expected = ref_minibatch_cka(X.astype(np.float64), Y.astype(np.float64), batches)
    for budget in (cka_module.HSIC_PARTIALS_BYTES, 112):  # one row per run; 19 rows per run, the last one padded
        monkeypatch.setattr(cka_module, "HSIC_PARTIALS_BYTES", budget)
        acc = MinibatchCKA(2, products="float32")
        for idx in batches:
            acc.update(torch.stack([u_center(gram_dense(torch.as_tensor(z[idx]))) for z in (X, Y)]))
        assert abs(acc.compute().value[0, 1].item() - expected) < 1e-6
    k = torch.as_tensor(X[:200])
    assert torch.allclose(gram_dense(k), gram(k), rtol=0, atol=1e-6 * gram(k).abs().max().item())
    assert torch.equal(gram_dense(k), gram_dense(k).T)


def test_accelerator_pipeline_names_the_layer_that_went_nan():
    ds = toy_dataset(96)

    with pytest.raises(CompareError, match="broken: layer head produced NaN/inf .* on pass 1, examples 0-31 "):
        compare([CompareModel("ok", make_resnet(0)), CompareModel("broken", Broken())], ds, batch_size=32, pipeline="accelerator")
    with pytest.raises(CompareError, match="pipeline must be one of"):
        compare([CompareModel("ok", make_resnet(0))], ds, pipeline="gpu")
    with pytest.raises(CompareError, match="hsic_products must be one of"):
        compare([CompareModel("ok", make_resnet(0))], ds, hsic_products="float16")
