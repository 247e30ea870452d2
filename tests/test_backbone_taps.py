"""One Backbone.finish for the MobileNets (issue 27): the levels come from the blocks' strides, every tap is a
``Tap``, and the state-dict keys and feature maps are those the hand-kept loops gave (checkpoints and
published weights keep loading)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from mbtasks.backbones.base import Tap, feature_levels
from mbtasks.backbones.mobilefacenet import MobileFaceNet
from mbtasks.backbones.mobilenet_v1 import MobileNetV1
from mbtasks.backbones.mobilenet_v2 import MobileNetV2

# written by the per-model level / tap loops before the shared finish (commit 43c292b): state-dict
# (key, shape) digest, out_channels, strides and feature shapes at 64 x 64
BEFORE = [
    (
        MobileNetV1,
        {"width": 0.25, "out_indices": (0, 1, 2, 3, 4)},
        "ea4722b86ba41c34",
        [16, 32, 64, 128, 256],
        [2, 4, 8, 16, 32],
        [[1, 16, 32, 32], [1, 32, 16, 16], [1, 64, 8, 8], [1, 128, 4, 4], [1, 256, 2, 2]],
    ),
    (
        MobileNetV1,
        {"width": 0.5, "out_indices": (3, 4)},
        "f38c7970a52d507a",
        [256, 512],
        [16, 32],
        [[1, 256, 4, 4], [1, 512, 2, 2]],
    ),
    (
        MobileNetV2,
        {"width": 0.25, "out_indices": (0, 1, 2, 3, 4)},
        "16a1a664291d9b81",
        [8, 8, 8, 24, 1280],
        [2, 4, 8, 16, 32],
        [[1, 8, 32, 32], [1, 8, 16, 16], [1, 8, 8, 8], [1, 24, 4, 4], [1, 1280, 2, 2]],
    ),
    (
        MobileNetV2,
        {"width": 0.5, "out_indices": (3, 4), "expansion_taps": True},
        "5f58c5c27d360963",
        [288, 1280],
        [16, 32],
        [[1, 288, 4, 4], [1, 1280, 2, 2]],
    ),
    (
        MobileNetV2,
        {"width": 0.35, "out_indices": (1, 2, 3, 4), "expansion_taps": True},
        "fab780dcb5d23b4a",
        [48, 96, 192, 1280],
        [4, 8, 16, 32],
        [[1, 48, 16, 16], [1, 96, 8, 8], [1, 192, 4, 4], [1, 1280, 2, 2]],
    ),
    (
        MobileFaceNet,
        {"width": 0.5, "out_indices": (0, 1, 2, 3)},
        "1c15d21d95481052",
        [32, 32, 64, 256],
        [2, 4, 8, 16],
        [[1, 32, 32, 32], [1, 32, 16, 16], [1, 64, 8, 8], [1, 256, 4, 4]],
    ),
    (MobileFaceNet, {"width": 1.0, "out_indices": (-1,)}, "bb854d7781f809fc", [512], [16], [[1, 512, 4, 4]]),
]


def key_digest(net: torch.nn.Module) -> str:
    keys = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    return hashlib.sha1(json.dumps(keys).encode()).hexdigest()[:16]


@pytest.mark.parametrize(("cls", "kwargs", "digest", "channels", "strides", "shapes"), BEFORE)
def test_keys_and_feature_maps_are_unchanged(cls, kwargs, digest, channels, strides, shapes):
    net = cls(**kwargs).eval()
    assert key_digest(net) == digest
    assert net.out_channels == channels and net.strides == strides
    with torch.no_grad():
        assert [list(f.shape) for f in net(torch.zeros(1, 3, 64, 64))] == shapes


@pytest.mark.parametrize(
    "net",
    [MobileNetV1(0.25, out_indices=(2, 4)), MobileNetV2(0.25, out_indices=(3, 4), expansion_taps=True)],
    ids=["v1", "v2-expansion"],
)
def test_every_mobilenet_has_one_tap_shape(net):
    assert all(isinstance(i, int) and isinstance(t, Tap) for i, t in net.taps.items())
    assert [t.level for t in net.taps.values()] == list(net.out_indices)


def test_expansion_tap_is_the_next_blocks_expansion():
    net = MobileNetV2(0.5, out_indices=(3, 4), expansion_taps=True).eval()
    (index, tap), _ = net.taps.items()
    assert tap == Tap(3, expand=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = net.blocks[:index](net.stem(x))
        assert torch.equal(net(x)[0], net.blocks[index].forward_expand(before))


def test_levels_come_from_the_convs_strides_with_tf_same_padding_too():
    for padding in ("symmetric", "tf_same"):
        net = MobileNetV1(0.25, out_indices=(0, 1, 2, 3, 4), padding=padding)
        levels = feature_levels(net.stem, net.blocks)
        # Table 1: the last block of each stride (2, 4, 8, 16, 32)
        assert [end for end, _ in levels] == [0, 2, 4, 10, 12]
        assert [c for _, c in levels] == net.out_channels
