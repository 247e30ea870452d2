"""Classification head: global average pool -> dropout -> fully connected (MobileNet V1 Table 1)."""

from __future__ import annotations

import torch
from torch import nn

from mbtasks.backbones.base import Backbone
from mbtasks.backbones.blocks import init_weights


class ClassifierHead(nn.Module):
    """Pool the coarsest feature map and map it to class logits.

    Args:
        in_channels: channels of the backbone's last feature map.
        num_classes: number of classes K.
        dropout: dropout probability before the FC layer.

    Shapes:
        ``(N, C, H, W) -> (N, K)`` logits.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


class Classifier(nn.Module):
    """Backbone + classification head: images ``(N, 3, H, W)`` -> logits ``(N, K)``."""

    def __init__(self, backbone: Backbone, head: ClassifierHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
