"""Weight conversion from timm / torchvision MobileNets gives identical logits."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from mbtasks.backbones.mobilenet_v1 import MobileNetV1
from mbtasks.backbones.mobilenet_v2 import MobileNetV2
from mbtasks.backbones.weights import convert_by_position, load_foreign_classifier
from mbtasks.models.classifier import Classifier, ClassifierHead


def randomize_bn(model):
    """Non-trivial BN statistics, so a mis-mapped buffer would change the logits."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_timm_mobilenetv1_converts_exactly():
    torch.manual_seed(0)
    src = timm.create_model("mobilenetv1_100", pretrained=False).eval()
    randomize_bn(src)
    ours = Classifier(MobileNetV1(1.0, act="relu6"), ClassifierHead(1024, 1000)).eval()
    load_foreign_classifier(ours, src.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (ours(x) - src(x)).abs().max().item()
    assert diff < 1e-4


def test_torchvision_mobilenet_v2_converts_exactly():
    torch.manual_seed(0)
    src = torchvision.models.mobilenet_v2(weights=None).eval()
    randomize_bn(src)
    ours = Classifier(MobileNetV2(1.0), ClassifierHead(1280, 1000, dropout=0.2)).eval()
    load_foreign_classifier(ours, src.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (ours(x) - src(x)).abs().max().item()
    assert diff < 1e-4


def test_conversion_refuses_width_mismatch():
    src = timm.create_model("mobilenetv1_100", pretrained=False)
    ours = Classifier(MobileNetV1(0.5), ClassifierHead(512, 1000))
    with pytest.raises(ValueError, match="shape"):
        convert_by_position(src.state_dict(), ours)
    v2 = Classifier(MobileNetV2(1.0), ClassifierHead(1280, 1000))
    with pytest.raises(ValueError, match="tensors"):
        convert_by_position(src.state_dict(), v2)
