"""MobileNet V2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
2018, arXiv:1801.04381).

Table 2 as data: a 3x3 stem, 17 inverted-residual blocks with linear bottlenecks
(expansion 6, ReLU6), then a 1x1 conv to 1280 channels, which stays 1280 for
width < 1 as in the paper.
"""

from __future__ import annotations

from torch import nn

from mbtasks.backbones.base import Backbone
from mbtasks.backbones.blocks import (
    ConvBNAct,
    InvertedResidual,
    check_padding,
    get_activation,
    round_channels,
)

# Table 2: expansion t, output channels c, repeats n, first stride s.
V2_ARCH: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
V2_STEM = 32
V2_HEAD = 1280


class MobileNetV2(Backbone):
    """MobileNet V2 feature extractor.

    Args:
        width: width multiplier (> 0).
        out_indices: feature levels to return, by stride: 0->2, 1->4, 2->8, 3->16, 4->32.
            Level 4 is the final 1x1 conv (1280 channels at width <= 1).
        act: activation name (``relu6`` is the paper's).
        expansion_taps: return the *expansion* output of the block that follows a level
            instead of the level's bottleneck output (SSDLite taps the 576-channel
            expansion at stride 16, Sandler et al. Sec. 6.2).
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
        act: str = "relu6",
        expansion_taps: bool = False,
        pretrained: str | None = None,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        act_layer = get_activation(act)
        self.padding = check_padding(padding)
        self.width = width
        stem = round_channels(V2_STEM, width)
        self.stem = ConvBNAct(3, stem, 3, 2, act_layer=act_layer, padding=padding)
        blocks: list[nn.Module] = []
        in_ch = stem
        for t, c, n, s in V2_ARCH:
            out_ch = round_channels(c, width)
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t, act_layer, padding))
                in_ch = out_ch
        head = round_channels(V2_HEAD, max(1.0, width))  # the 1x1 conv ends level 4 (stride 32)
        blocks.append(ConvBNAct(in_ch, head, 1, act_layer=act_layer, padding=padding))
        self.blocks = nn.Sequential(*blocks)
        self.expansion_taps = expansion_taps
        self.finish(out_indices, pretrained, expansion_taps)
