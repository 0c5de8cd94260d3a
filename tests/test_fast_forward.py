"""The comparison's fast forward (issue #15): channels-last models and inputs, conv + BatchNorm (+ ReLU) fused,
Grams read in the taps' memory order through oneDNN, autograd off. It must give the float64 reference's CKA
within 1e-6 on CIFAR ResNets and on a timm model through hooks, hand the models back as they came, and record
which forward ran."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import toy_dataset
from torch import nn

from hubcompare.models.devices import memory_format
from hubcompare.models.fusion import fused_inference
from hubcompare.models.resnet import CifarResNet
from hubcompare.similarity.cka import flat_features, gram, onednn_products
from hubcompare.similarity.engine import CompareModel, compare, minibatch_plan


def calibrated(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """BatchNorm statistics and affine parameters far from the identity, so a wrong fold would show."""
    g = torch.Generator().manual_seed(7)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.data = 0.5 + torch.rand(bn.num_features, generator=g)
        bn.bias.data = torch.randn(bn.num_features, generator=g) * 0.3
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        model.train()(images[:32].float() / 255)
    return model.eval()


def resnet(seed: int, width: int, ds) -> CifarResNet:
    torch.manual_seed(seed)
    return calibrated(CifarResNet(depth=8, width=width, in_chans=1, num_classes=10), ds.images)


def timm_resnet(seed: int, size: int, images: torch.Tensor) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", num_classes=10)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, size, size), "mean": (0.0,) * 3, "std": (1.0,) * 3}
    return calibrated(model, images)


def reference_cka(acts_a, acts_b, batches) -> np.ndarray:
    """float64 minibatch CKA from NCHW float32 activations: the recipe's three-term HSIC_1 on float64 Grams."""
    def hsic(k, l, n):
        k, l = k.copy(), l.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        return (np.trace(k @ l) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (k @ l).sum()) / (n * (n - 3))

    out = np.zeros((len(acts_a), len(acts_b)))
    for i, x in enumerate(acts_a):
        for j, y in enumerate(acts_b):
            s_xy = s_xx = s_yy = 0.0
            for idx in batches:
                k, l = x[idx] @ x[idx].T, y[idx] @ y[idx].T
                s_xy, s_xx, s_yy = s_xy + hsic(k, l, len(idx)), s_xx + hsic(k, k, len(idx)), s_yy + hsic(l, l, len(idx))
            out[i, j] = s_xy / np.sqrt(s_xx * s_yy)
    return out


def hooked(model: nn.Module, x: torch.Tensor, names: list[str]) -> list[np.ndarray]:
    got, modules = {}, dict(model.named_modules())
    # cloned: timm's blocks add the shortcut into bn2's output in place after the hook has seen it
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o.clone())) for n in names]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [got[n].reshape(len(x), -1).double().numpy() for n in names]


def snapshot(model: nn.Module) -> dict:
    return {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, (v, stride) in before.items():
        assert torch.equal(after[k], v) and after[k].stride() == stride, k
    assert not any(type(m).__name__ == "FusedConvBN" for m in model.modules())


def test_fast_forward_matches_the_float64_reference_on_cifar_resnets():
    ds = toy_dataset(96)
    a, b = resnet(0, 1, ds), resnet(1, 2, ds)
    before = [snapshot(a), snapshot(b)]
    names = ["stem", "stage1.block1.branch", "stage1.block1.out", "stage2.block1.out", "stage3.block1.out", "pool"]
    comp = compare([CompareModel("A", a, layers=names), CompareModel("B", b, layers=names)], ds, batch_size=32, passes=2, seed=3)
    batches = [mb.indices.numpy() for mb in minibatch_plan(96, 32, 2, 3)]
    with torch.no_grad():  # the reference's activations: NCHW, BatchNorm as the model has it
        acts = [[t.reshape(96, -1).double().numpy() for t in m.forward_taps(ds.images.float() / 255, names).values()]
                for m in (a, b)]
    assert np.abs(comp.pair(0, 1).value - reference_cka(acts[0], acts[1], batches)).max() < 1e-6
    forward = comp.settings["forward"]
    assert forward["channels_last"] is True and forward["memory_format"] == {"A": "channels_last", "B": "channels_last"}
    # depth 8: the stem and 3 blocks x 2 convolutions each fold their BatchNorm; stem + 3 first-conv ReLUs fuse
    assert forward["batchnorm_fused"]["A"] == {"batchnorm_folded": 7, "relu_fused": 4}
    assert forward["gram_products"] == ("oneDNN float32 matmul" if onednn_products() else "BLAS float32 matmul")
    for m, snap in zip((a, b), before):  # the models come back as they were: values, layouts and modules
        assert_unchanged(m, snap)


def test_fast_forward_matches_the_float64_reference_on_a_timm_model_through_hooks():
    ds = toy_dataset(64, size=32, channels=3)
    models = [timm_resnet(s, 32, ds.images) for s in (0, 1)]
    before = [snapshot(m) for m in models]
    layers = ["act1", "layer1.0", "layer2.0.bn2", "layer3.1", "layer4.1"]  # a BatchNorm tapped by name, too
    comp = compare([CompareModel(f"t{i}", m, layers=layers) for i, m in enumerate(models)], ds, batch_size=32)
    batches = [mb.indices.numpy() for mb in minibatch_plan(64, 32, 1, 0)]
    acts = [hooked(m, ds.images.float() / 255, layers) for m in models]
    assert np.abs(comp.pair(0, 1).value - reference_cka(acts[0], acts[1], batches)).max() < 1e-6
    fused = comp.settings["forward"]["batchnorm_fused"]["t0"]
    # resnet18: 20 conv + BatchNorm pairs, all folded; the stem's and every block's first ReLU fused (past timm's
    # drop_block placeholder); layer2.0.bn2, tapped, still shows its own output (checked against the reference above)
    assert fused["batchnorm_folded"] == 20 and fused["relu_fused"] == 9
    assert comp.settings["forward"]["memory_format"]["t0"] == "channels_last"
    for m, snap in zip(models, before):
        assert_unchanged(m, snap)


def test_previous_forward_is_recorded_and_agrees_with_the_fast_one():
    ds = toy_dataset(64)
    a, b = resnet(2, 1, ds), resnet(3, 1, ds)
    fast = compare([CompareModel("A", a), CompareModel("B", b)], ds, batch_size=32)
    plain = compare([CompareModel("A", a), CompareModel("B", b)], ds, batch_size=32, memory_format="contiguous",
                    fuse_batchnorm=False)
    assert np.abs(fast.pair(0, 1).value - plain.pair(0, 1).value).max() < 1e-6
    forward = plain.settings["forward"]
    assert forward["channels_last"] is False and forward["memory_format"]["A"] == "contiguous"
    assert forward["batchnorm_fused"]["A"] == {"batchnorm_folded": 0, "relu_fused": 0}
    with pytest.raises(Exception, match="memory_format must be one of"):
        compare([CompareModel("A", a)], ds, memory_format="nhwc")


def test_channels_last_taps_give_the_grams_of_nchw_taps_without_a_copy():
    g = torch.Generator().manual_seed(0)
    act = torch.relu(torch.randn(64, 24, 9, 9, generator=g)) + 0.5
    cl = act.contiguous(memory_format=torch.channels_last)
    flat = flat_features(cl)
    assert flat.shape == (64, 24 * 81) and flat.data_ptr() == cl.data_ptr()  # a view: no NCHW copy
    ref = act.reshape(64, -1).double()
    ref = ref - ref.mean(0)
    k64 = ref @ ref.T
    for centred in (True, False):
        k_nchw, k_cl = gram(act, centred=centred), gram(cl, centred=centred)
        scale = k64.abs().max()
        if centred:  # both the centred Gram, to float32 rounding
            assert ((k_cl.double() - k64).abs().max() / scale) < 1e-5
        assert ((k_cl.double() - k_nchw.double()).abs().max() / k_nchw.double().abs().max()) < 1e-5


def test_fusion_leaves_tapped_and_shared_modules_alone():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c3, self.b3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
            self.relu = nn.ReLU()  # called twice: never replaced

        def forward(self, x):
            y = self.relu(self.b1(self.c1(x)))
            z = self.c2(y)
            return self.relu(self.b2(z)) + z.mean() + self.b3(self.c3(y))  # c2's output feeds two consumers

    x = torch.rand(4, 3, 6, 6)
    net = calibrated(Net(), (x * 255).to(torch.uint8))
    with torch.no_grad():
        expected = net(x)
        with fused_inference(net, keep=["c3"]) as record:
            assert record == {"batchnorm_folded": 1, "relu_fused": 0}  # only c1 + b1: c2 is shared, c3 is tapped
            assert isinstance(net.c3, nn.Conv2d) and isinstance(net.b1, nn.Identity) and isinstance(net.relu, nn.ReLU)
            torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(net.c1, nn.Conv2d) and isinstance(net.b1, nn.BatchNorm2d)
    with fused_inference(net.train()) as record:
        assert record["batchnorm_folded"] == 0 and "training" in record["not_fused"]


def test_memory_format_puts_each_layout_back():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    net[1].weight.data = net[1].weight.data.contiguous(memory_format=torch.channels_last)  # one given channels-last
    strides = [p.stride() for p in net.parameters()]
    values = [p.detach().clone() for p in net.parameters()]
    with memory_format([net], torch.channels_last):
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters() if p.dim() == 4)
    assert [p.stride() for p in net.parameters()] == strides
    assert all(torch.equal(p, v) for p, v in zip(net.parameters(), values))
