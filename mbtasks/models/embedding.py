"""Embedding head (FaceNet, Schroff et al. 2015, arXiv:1503.03832, Fig. 2): global pooling ->
linear -> batch norm -> L2 normalisation, so embeddings live on the unit hypersphere."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mbtasks.backbones.base import Backbone


class EmbeddingHead(nn.Module):
    """Pool the coarsest feature map and map it to a unit-length embedding.

    Args:
        in_channels: channels of the backbone's last feature map.
        dim: embedding size (FaceNet: 128).
        dropout: dropout probability before the linear layer.
        batch_norm: batch-normalise the projection before L2 normalisation.

    Shapes:
        ``(N, C, H, W) -> (N, dim)``, every row of unit L2 norm.
    """

    def __init__(self, in_channels: int, dim: int = 128, dropout: float = 0.0, batch_norm: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, dim, bias=not batch_norm)
        self.bn = nn.BatchNorm1d(dim) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(self.dropout(torch.flatten(self.pool(x), 1)))
        return F.normalize(self.bn(x), dim=1)


class EmbeddingNet(nn.Module):
    """Backbone + embedding head: images ``(N, 3, H, W)`` -> embeddings ``(N, dim)``."""

    def __init__(self, backbone: Backbone, head: EmbeddingHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def dim(self) -> int:
        return self.head.dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def embed(self, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Embeddings for inference (and the export graph); with ``flip``, of image + mirror image,
        summed and re-normalised. Callers run it under ``torch.no_grad()``."""
        e = self(x)
        if flip:
            e = F.normalize(e + self(torch.flip(x, dims=[-1])), dim=1)
        return e
