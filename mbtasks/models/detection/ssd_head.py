"""SSD and SSDLite heads for MobileNet backbones.

- SSD (Liu et al. 2016, arXiv:1512.02325) as the MobileNet V1 paper (Howard et al. 2017,
  arXiv:1704.04861, Sec. 4.6) runs it through the TF detection API's ``ssd_mobilenet_v1``:
  the backbone's stride-16 and stride-32 maps, then four extra blocks (1x1 reduce to half
  the depth -> 3x3 stride-2 conv) of 512/256/256/128 channels times the width multiplier,
  and a convolutional class + box predictor on each of the six maps.
- SSDLite (Sandler et al. 2018, arXiv:1801.04381, Sec. 6.2): every regular conv of the
  extra blocks and predictors replaced by a depthwise-separable one (3x3 depthwise ->
  1x1), ReLU6.

Plain nn code: channels come from the backbone's ``out_channels``, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mbtasks.backbones.blocks import ConvBNAct, get_activation, round_channels
from mbtasks.models.detection.anchors import DefaultBoxes


class ExtraBlock(nn.Sequential):
    """One extra feature layer: 1x1 reduce to ``out/2`` -> 3x3 stride-2 to ``out``.

    ``depthwise=True`` (SSDLite) makes the 3x3 a depthwise conv followed by a 1x1 to ``out``.
    Shapes: ``(N, C_in, H, W) -> (N, C_out, ceil(H / 2), ceil(W / 2))``.
    """

    def __init__(self, in_channels: int, out_channels: int, depthwise: bool, act_layer) -> None:
        mid = max(8, out_channels // 2)
        layers: list[nn.Module] = [ConvBNAct(in_channels, mid, 1, act_layer=act_layer)]
        if depthwise:
            layers += [
                ConvBNAct(mid, mid, 3, 2, groups=mid, act_layer=act_layer),
                ConvBNAct(mid, out_channels, 1, act_layer=act_layer),
            ]
        else:
            layers.append(ConvBNAct(mid, out_channels, 3, 2, act_layer=act_layer))
        super().__init__(*layers)
        self.out_channels = out_channels


def predictor(in_channels: int, out_channels: int, depthwise: bool, kernel_size: int, act_layer) -> nn.Module:
    """A conv predicting ``out_channels`` numbers per cell (with bias, no BN/activation).

    SSD: one ``kernel_size`` conv. SSDLite: 3x3 depthwise + BN + act, then a 1x1 conv.
    """
    if depthwise:
        return nn.Sequential(
            ConvBNAct(in_channels, in_channels, 3, groups=in_channels, act_layer=act_layer),
            nn.Conv2d(in_channels, out_channels, 1),
        )
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class SSDHead(nn.Module):
    """Extra layers + class and box predictors on every prediction map.

    Args:
        in_channels: channels of the backbone maps used (``backbone.out_channels``, finest first).
        num_classes: classes including background (K + 1).
        anchors: the default boxes (``head.anchors``; default :class:`DefaultBoxes`); built here for
            the head's number of maps, and the number of boxes per cell sizes the predictors.
        extra_channels: output channels of the extra blocks at width 1 (one map each).
        width: width multiplier applied to ``extra_channels`` through ``round_channels``; the task
            passes the backbone's, as it passes ``in_channels``.
        depthwise: SSDLite (depthwise-separable extras and predictors) instead of SSD.
        kernel_size: SSD predictor kernel (1 in TF's ``ssd_mobilenet_v1``, which is what the
            MobileNet paper counts; 3 in the original SSD). Ignored when ``depthwise``.
        act: activation of extras (and SSDLite predictors): ``relu`` (V1) or ``relu6`` (V2).

    Forward:
        list of backbone maps -> ``(cls_logits (N, A, K + 1), bbox_regression (N, A, 4),
        grid_sizes [(h_k, w_k)])`` with ``A = sum_k h_k w_k B_k`` in default-box order.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        anchors: DefaultBoxes | None = None,
        extra_channels: Sequence[int] = (512, 256, 256, 128),
        width: float = 1.0,
        depthwise: bool = False,
        kernel_size: int = 1,
        act: str = "relu",
    ) -> None:
        super().__init__()
        if kernel_size not in (1, 3, 5):
            raise ValueError(f"head.kernel_size={kernel_size}: expected 1, 3 or 5")
        act_layer = get_activation(act)
        self.num_classes = num_classes
        extras, channels = [], list(in_channels)
        for ch in extra_channels:
            block = ExtraBlock(channels[-1], round_channels(ch, width), depthwise, act_layer)
            extras.append(block)
            channels.append(block.out_channels)
        self.extras = nn.ModuleList(extras)
        self.map_channels = channels
        self.anchors = (anchors if anchors is not None else DefaultBoxes()).build(len(channels))
        boxes_per_cell = self.anchors.num_anchors_per_location()
        self.cls_heads = nn.ModuleList(
            predictor(c, b * num_classes, depthwise, kernel_size, act_layer)
            for c, b in zip(channels, boxes_per_cell, strict=True)
        )
        self.box_heads = nn.ModuleList(
            predictor(c, b * 4, depthwise, kernel_size, act_layer)
            for c, b in zip(channels, boxes_per_cell, strict=True)
        )
        for m in [*self.cls_heads.modules(), *self.box_heads.modules()]:
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _flatten(x: torch.Tensor, per_box: int) -> torch.Tensor:
        # (N, B * P, H, W) -> (N, H * W * B, P): cell-major, then box type (default-box order).
        n, _, h, w = x.shape
        return x.view(n, -1, per_box, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_box)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        maps = list(features)
        for block in self.extras:
            maps.append(block(maps[-1]))
        cls = [self._flatten(head(x), self.num_classes) for head, x in zip(self.cls_heads, maps, strict=True)]
        box = [self._flatten(head(x), 4) for head, x in zip(self.box_heads, maps, strict=True)]
        grids = [(int(x.shape[-2]), int(x.shape[-1])) for x in maps]
        return torch.cat(cls, dim=1), torch.cat(box, dim=1), grids
