"""The CIFAR ResNet family: architecture as in the paper's recipe, tap names/shapes, timm registration."""

import pytest
import timm
import torch

import hubcompare  # noqa: F401  (registers cifar_resnet with timm)
from hubcompare.errors import InvalidArchitectureError, LayerSelectionError
from hubcompare.models.resnet import CifarResNet
from hubcompare.similarity.capture import LayerCapture


def expected_param_count(depth: int, width: float, in_chans: int = 3, classes: int = 10) -> int:
    """Independent count from the recipe: 3x3 convs with bias, BN (2 params/channel), 1x1 projections with bias."""
    n = (depth - 2) // 6
    chs = [round(16 * width), round(32 * width), round(64 * width)]
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    total = conv(in_chans, chs[0], 3) + 2 * chs[0]
    prev = chs[0]
    for c in chs:
        for b in range(n):
            i = prev if b == 0 else c
            total += conv(i, c, 3) + 2 * c + conv(c, c, 3) + 2 * c
            if b == 0 and i != c:
                total += conv(i, c, 1)
        prev = c
    return total + chs[-1] * classes + classes


@pytest.mark.parametrize("depth,width", [(8, 1), (14, 1), (20, 1), (20, 2), (26, 0.5), (38, 4)])
def test_layer_names_and_shapes(depth, width):
    model = timm.create_model("cifar_resnet", depth=depth, width=width, num_classes=7).eval()
    n = (depth - 2) // 6
    chs = [round(16 * width), round(32 * width), round(64 * width)]
    names = model.tap_names
    assert len(names) == 1 + 3 * n * 2 + 2
    assert names[0] == "stem" and names[-2:] == ["pool", "logits"]
    assert names[1:3] == ["stage1.block1.branch", "stage1.block1.out"]
    assert names[-3] == f"stage3.block{n}.out"
    with torch.no_grad():
        acts = model.forward_taps(torch.rand(3, 3, 32, 32))
    assert list(acts) == names  # forward order
    assert acts["stem"].shape == (3, chs[0], 32, 32)
    for s in range(3):
        for b in range(n):
            for kind in ("branch", "out"):
                assert acts[f"stage{s + 1}.block{b + 1}.{kind}"].shape == (3, chs[s], 32 >> s, 32 >> s)
    assert acts["pool"].shape == (3, chs[2])
    assert acts["logits"].shape == (3, 7)
    # stage boundaries: stem | stage1 | stage2 | stage3 | head
    assert model.stage_boundaries() == [1, 1 + 2 * n, 1 + 4 * n, 1 + 6 * n]
    assert sum(p.numel() for p in model.parameters()) == expected_param_count(depth, width, classes=7)


def test_taps_match_forward_and_relu_after_add():
    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet", depth=14, width=1).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        acts = model.forward_taps(x)
        assert torch.equal(acts["logits"], model(x))
        assert torch.equal(acts["pool"], model.forward_head(model.forward_features(x), pre_logits=True))
        # a subset is returned in forward order with the same values, stopping early
        sub = model.forward_taps(x, ["stage2.block1.out", "stem"])
    assert list(sub) == ["stem", "stage2.block1.out"]
    assert torch.equal(sub["stage2.block1.out"], acts["stage2.block1.out"])
    # ReLU after the add: block outputs are non-negative, residual branches (BN output) are not
    assert (acts["stage1.block1.out"] >= 0).all()
    assert (acts["stage1.block1.branch"] < 0).any()
    # post-add output = relu(branch + shortcut(input))
    block = model.stages[0][1]
    expected = torch.relu(acts["stage1.block2.branch"] + acts["stage1.block1.out"])
    assert torch.allclose(acts["stage1.block2.out"], expected)
    assert isinstance(block.shortcut, torch.nn.Identity)
    assert isinstance(model.stages[1][0].shortcut, torch.nn.Conv2d) and model.stages[1][0].shortcut.bias is not None


def test_any_input_channels_and_classes():
    model = timm.create_model("cifar_resnet", depth=8, width=1, in_chans=1, num_classes=3)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    assert model.forward_taps(torch.rand(2, 1, 8, 8), ["stage3.block1.out"])["stage3.block1.out"].shape == (2, 64, 2, 2)


def test_batchnorm_matches_keras_defaults():
    model = CifarResNet(depth=8)
    bn = model.stem.bn
    assert bn.momentum == pytest.approx(0.01) and bn.eps == pytest.approx(1e-3)


@pytest.mark.parametrize("depth", [0, 7, 9, 21, 100, -4])
def test_bad_depth_names_valid_depths(depth):
    with pytest.raises(InvalidArchitectureError, match=r"6n\+2.*14, 20, 26"):
        timm.create_model("cifar_resnet", depth=depth)


@pytest.mark.parametrize("width", [0, -1, 0.0])
def test_bad_width(width):
    with pytest.raises(InvalidArchitectureError, match="width"):
        CifarResNet(depth=20, width=width)


def test_layer_patterns():
    model = CifarResNet(depth=14)
    outs = LayerCapture(model, ["*.out"]).layers
    assert [t.name for t in outs] == [f"stage{s}.block{b}.out" for s in (1, 2, 3) for b in (1, 2)]
    assert [t.stage for t in outs] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(LayerSelectionError, match="match no layer"):
        LayerCapture(model, ["layer4.*"])
    with pytest.raises(InvalidArchitectureError, match="unknown layer"):
        model.forward_taps(torch.rand(1, 3, 32, 32), ["nope"])
