"""MobileNet V1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for
Mobile Vision Applications", 2017, arXiv:1704.04861).

The 28-layer network of Table 1: a full 3x3 stem conv, then 13 depthwise-separable
blocks, BatchNorm + activation after every conv. The width multiplier alpha scales
every layer through :func:`round_channels`; the resolution multiplier rho is the
input size (``data.image_size``), not a property of the network.
"""

from __future__ import annotations

from torch import nn

from mbtasks.backbones.base import Backbone
from mbtasks.backbones.blocks import (
    ConvBNAct,
    DepthwiseSeparableConv,
    check_padding,
    get_activation,
    round_channels,
)

# Table 1: (output channels, depthwise stride) for each depthwise-separable block.
# The paper prints the last depthwise as "s2", but its 7x7 output needs stride 1.
V1_ARCH: list[tuple[int, int]] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]
V1_STEM = 32


class MobileNetV1(Backbone):
    """MobileNet V1 feature extractor.

    Args:
        width: width multiplier alpha (> 0); 1.0, 0.75, 0.5, 0.25 are the paper's.
        out_indices: feature levels to return, by stride: 0->2, 1->4, 2->8, 3->16, 4->32.
        act: activation name; ``relu`` is the paper's, ``relu6`` matches timm's weights.
        pretrained: weights to start from (PATH | ``timm`` | null; :mod:`mbtasks.backbones.pretrained`).
        padding: ``symmetric`` (PyTorch's) | ``tf_same`` (TensorFlow's SAME, which TF-trained
            weights need: :mod:`mbtasks.backbones.weights`); the state-dict keys are the same.

    Returns (forward):
        list of ``(N, C_i, H / s_i, W / s_i)`` tensors, finest first.
    """

    def __init__(
        self,
        width: float = 1.0,
        out_indices: tuple[int, ...] = (4,),
        act: str = "relu",
        pretrained: str | None = None,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        act_layer = get_activation(act)
        self.padding = check_padding(padding)
        self.width = width
        stem = round_channels(V1_STEM, width)
        self.stem = ConvBNAct(3, stem, 3, 2, act_layer=act_layer, padding=padding)
        blocks, in_ch = [], stem
        for ch, s in V1_ARCH:
            out_ch = round_channels(ch, width)
            blocks.append(DepthwiseSeparableConv(in_ch, out_ch, s, act_layer, padding))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.finish(out_indices, pretrained)
