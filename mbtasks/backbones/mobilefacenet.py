"""MobileFaceNet (Chen, Liu, Gao and Han, "MobileFaceNets: Efficient CNNs for Accurate Real-Time
Face Verification on Mobile Devices", 2018, arXiv:1804.07573).

Table 1 as data: a 3x3 stride-2 stem and a 3x3 depthwise conv (64 channels), MobileNet V2
bottlenecks with small expansions (2 and 4) and PReLU, then a 1x1 conv to 512 channels at stride
16 (7x7 at 112x112). The table's last two rows, a linear global depthwise conv (GDConv, kernel =
the whole map) and a linear 1x1 conv to 128, are the embedding head
(:class:`mbtasks.models.embedding.EmbeddingHead` with ``pool=gdc``, chosen for this backbone by
``head.pool=auto``): the backbone ends at the 512-channel map so every task can use it.
With that head it counts 0.99M parameters and 221M mult-adds at 112x112, as the paper says.
"""

from __future__ import annotations

from torch import nn

from mbtasks.backbones.base import Backbone
from mbtasks.backbones.blocks import (
    ACTIVATIONS,
    ConvBNAct,
    InvertedResidual,
    PReLU,
    check_padding,
    round_channels,
)
from mbtasks.errors import ConfigError, suggest

# Table 1: expansion t, output channels c, repeats n, first stride s.
MFN_ARCH: list[tuple[int, int, int, int]] = [
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
]
MFN_STEM = 64
MFN_HEAD = 512
MFN_ACTIVATIONS = {"prelu": PReLU, **ACTIVATIONS}


class MobileFaceNet(Backbone):
    """MobileFaceNet feature extractor (the paper's network up to its 1x1 conv to 512 channels).

    Args:
        width: width multiplier (> 0) applied to every layer (1.0 is the paper's network).
        out_indices: feature levels to return, by stride: 0->2, 1->4, 2->8, 3->16 (the last,
            the 512-channel map the embedding head's GDConv reduces).
        act: activation name (``prelu`` is the paper's; ``relu``, ``relu6``, ``hardswish``, ``silu``).
        pretrained: weights to start from (PATH | null; no published weights exist).
        padding: ``symmetric`` (PyTorch's) | ``tf_same`` (TensorFlow's SAME).

    Returns (forward):
        list of ``(N, C_i, ceil(H / s_i), ceil(W / s_i))`` tensors, finest first.
    """

    # the embedding head (head.pool=auto) replaces average pooling with a global depthwise conv
    embedding_pool = "gdc"

    def __init__(
        self,
        width: float = 1.0,
        out_indices: tuple[int, ...] = (-1,),
        act: str = "prelu",
        pretrained: str | None = None,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        if act not in MFN_ACTIVATIONS:
            raise ConfigError(
                f"backbone.act={act!r}: expected one of {list(MFN_ACTIVATIONS)} (prelu is the "
                f"paper's).{suggest(act, MFN_ACTIVATIONS)}"
            )
        act_layer = MFN_ACTIVATIONS[act]
        self.padding = check_padding(padding)
        self.width = width
        stem = round_channels(MFN_STEM, width)
        self.stem = ConvBNAct(3, stem, 3, 2, act_layer=act_layer, padding=padding)
        # Table 1's second row: a depthwise 3x3 alone (no pointwise conv after it)
        blocks: list[nn.Module] = [ConvBNAct(stem, stem, 3, 1, stem, act_layer, padding)]
        in_ch = stem
        for t, c, n, s in MFN_ARCH:
            out_ch = round_channels(c, width)
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t, act_layer, padding))
                in_ch = out_ch
        blocks.append(ConvBNAct(in_ch, round_channels(MFN_HEAD, width), 1, act_layer=act_layer, padding=padding))
        self.blocks = nn.Sequential(*blocks)
        self.finish(out_indices, pretrained)
