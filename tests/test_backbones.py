"""The backbone contract and the papers' parameter / mult-add tables."""

from __future__ import annotations

import pytest
import torch

from mbtasks.backbones.blocks import DepthwiseSeparableConv, InvertedResidual, round_channels
from mbtasks.backbones.mobilenet_v1 import MobileNetV1
from mbtasks.backbones.mobilenet_v2 import MobileNetV2
from mbtasks.backbones.timm import TimmBackbone
from mbtasks.models.classifier import Classifier, ClassifierHead
from mbtasks.profiling import count_mult_adds, count_params


def classifier(backbone, classes=1000):
    return Classifier(backbone, ClassifierHead(backbone.num_features, classes))


def profile(backbone, size=224):
    model = classifier(backbone)
    return count_params(model), count_mult_adds(model, torch.zeros(1, 3, size, size))


# MobileNet V1 paper, Tables 6 and 7: (width, resolution) -> (params in M, mult-adds in M).
V1_TABLE = [
    (1.0, 224, 4.2, 569),
    (0.75, 224, 2.6, 325),
    (0.5, 224, 1.3, 149),
    (0.25, 224, 0.5, 41),
    (1.0, 192, 4.2, 418),
    (1.0, 160, 4.2, 290),
    (1.0, 128, 4.2, 186),
]


@pytest.mark.parametrize(("width", "size", "paper_params", "paper_macs"), V1_TABLE)
def test_mobilenet_v1_matches_paper_table(width, size, paper_params, paper_macs):
    params, macs = profile(MobileNetV1(width), size)
    # The paper prints params to 0.1M (0.25's 0.47M prints as 0.5M): compare at that precision.
    assert round(params / 1e6, 1) == pytest.approx(paper_params)
    assert macs / 1e6 == pytest.approx(paper_macs, rel=0.02)


def test_mobilenet_v1_has_28_layers_and_paper_structure():
    net = MobileNetV1(1.0)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    fc = 1
    assert len(convs) + fc == 28
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == len(convs)  # BN after every conv
    assert isinstance(net.blocks[-1], DepthwiseSeparableConv) and net.blocks[-1].stride == 1
    assert all(isinstance(m, torch.nn.ReLU) for m in net.modules() if isinstance(m, torch.nn.ReLU | torch.nn.ReLU6))


def test_mobilenet_v2_matches_paper():
    params, macs = profile(MobileNetV2(1.0))
    assert round(params / 1e6, 1) in (3.4, 3.5)  # torchvision and ours: 3.50M
    assert macs / 1e6 == pytest.approx(300, rel=0.02)
    assert any(isinstance(m, torch.nn.ReLU6) for m in MobileNetV2(1.0).modules())


def test_mobilenet_v2_keeps_1280_below_width_one_and_scales_above():
    assert MobileNetV2(0.5).num_features == 1280
    assert MobileNetV2(0.35).num_features == 1280
    assert MobileNetV2(1.4).num_features == 1792
    blocks = [b for b in MobileNetV2(1.0).blocks if isinstance(b, InvertedResidual)]
    assert len(blocks) == 17
    assert sum(b.use_residual for b in blocks) == 10


@pytest.mark.parametrize("width", [1.0, 0.75, 0.5, 0.35, 0.25, 1.3])
@pytest.mark.parametrize("cls", [MobileNetV1, MobileNetV2])
def test_contract_all_levels(cls, width):
    net = cls(width, out_indices=(0, 1, 2, 3, 4)).eval()
    feats = net(torch.randn(2, 3, 96, 64))
    assert net.strides == [2, 4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == net.out_channels
    for f, s in zip(feats, net.strides, strict=True):
        assert f.shape[0] == 2 and f.shape[2:] == (96 // s, 64 // s)
    assert all(c % 8 == 0 for c in net.out_channels)


def test_out_indices_select_and_validate():
    net = MobileNetV1(0.5, out_indices=(3, -1))
    assert net.strides == [16, 32] and net.out_channels == [256, 512]
    with pytest.raises(ValueError, match="out_indices"):
        MobileNetV1(1.0, out_indices=(5,))
    with pytest.raises(ValueError, match="increasing"):
        MobileNetV1(1.0, out_indices=(4, 3))


def test_v2_expansion_taps_give_ssdlite_features():
    net = MobileNetV2(1.0, out_indices=(3, 4), expansion_taps=True).eval()
    feats = net(torch.randn(1, 3, 320, 320))
    assert net.out_channels == [576, 1280]
    assert [tuple(f.shape[1:]) for f in feats] == [(576, 20, 20), (1280, 10, 10)]


def test_round_channels_rule():
    assert [round_channels(32, w) for w in (1.0, 0.75, 0.5, 0.25)] == [32, 24, 16, 8]
    assert round_channels(1024, 0.35) == 360
    assert round_channels(3, 1.0) == 8  # never below the divisor
    with pytest.raises(ValueError, match="> 0"):
        round_channels(32, 0.0)


def test_width_must_be_positive():
    with pytest.raises(ValueError, match="> 0"):
        MobileNetV1(-0.5)


def test_activation_is_configurable():
    net = MobileNetV1(0.25, act="relu6")
    assert any(isinstance(m, torch.nn.ReLU6) for m in net.modules())
    with pytest.raises(ValueError, match="unknown activation"):
        MobileNetV1(1.0, act="gelu2")


def test_timm_backbone_contract():
    net = TimmBackbone("mobilenetv3_small_100", pretrained=False, out_indices=(3, 4)).eval()
    feats = net(torch.randn(1, 3, 64, 64))
    assert net.strides == [16, 32]
    assert [f.shape[1] for f in feats] == net.out_channels
    with pytest.raises(ValueError, match="unknown timm model"):
        TimmBackbone("mobilenetv9_huge")
