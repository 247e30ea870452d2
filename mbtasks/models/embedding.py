"""Embedding head (FaceNet, Schroff et al. 2015, arXiv:1503.03832, Fig. 2): global pooling ->
linear -> batch norm -> L2 normalisation, so embeddings live on the unit hypersphere.

The pooling is an average, or MobileFaceNet's global depthwise convolution (GDConv: Chen et al.
2018, arXiv:1804.07573, Sec. 3.2), which weighs each position of the final map by a learnt
per-channel kernel as large as the map: the centre of a face matters more than its corners."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mbtasks.backbones.base import Backbone
from mbtasks.errors import ConfigError, suggest

# head.pool: auto (the backbone's embedding_pool: gdc for MobileFaceNet, avg otherwise) | avg | gdc
POOLS = ("auto", "avg", "gdc")


class GlobalDepthwiseConv(nn.Sequential):
    """Linear GDConv: a depthwise ``k x k`` conv without padding over a ``k x k`` map, then batch norm.

    Shapes:
        ``(N, C, k, k) -> (N, C, 1, 1)``; another map size is refused with the size it was built for.
    """

    def __init__(self, channels: int, feature_size: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, feature_size, groups=channels, bias=False), nn.BatchNorm2d(channels)
        )
        self.feature_size = feature_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.feature_size
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and tuple(x.shape[-2:]) != (k, k):
            raise ValueError(
                f"the GDConv embedding head was built for {k}x{k} feature maps (the training "
                f"data.image_size) but got {tuple(x.shape[-2:])}: embed images of the size it was "
                f"trained at"
            )
        return super().forward(x)


class EmbeddingHead(nn.Module):
    """Pool the coarsest feature map and map it to a unit-length embedding.

    Args:
        in_channels: channels of the backbone's last feature map.
        dim: embedding size (FaceNet: 128).
        dropout: dropout probability before the linear layer.
        batch_norm: batch-normalise the projection before L2 normalisation.
        pool: ``avg`` (global average), ``gdc`` (a linear global depthwise conv, MobileFaceNet) or
            ``auto`` (``auto_pool``).
        feature_size: side of the final feature map, the GDConv's kernel (``gdc`` needs it).
        auto_pool: what ``auto`` means: the backbone's ``embedding_pool`` (:func:`build_embedding_head`).

    Shapes:
        ``(N, C, H, W) -> (N, dim)``, every row of unit L2 norm.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int = 128,
        dropout: float = 0.0,
        batch_norm: bool = True,
        pool: str = "auto",
        feature_size: int | None = None,
        auto_pool: str = "avg",
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"head.pool={pool!r}: expected one of {list(POOLS)}.{suggest(pool, POOLS)}")
        self.pool_kind = auto_pool if pool == "auto" else pool
        self.dim = dim
        if self.pool_kind == "gdc":
            if feature_size is None or feature_size < 1:
                raise ConfigError(
                    f"head.pool=gdc needs the final feature map size (the GDConv kernel), got {feature_size!r}"
                )
            self.pool: nn.Module = GlobalDepthwiseConv(in_channels, int(feature_size))
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, dim, bias=not batch_norm)
        self.bn = nn.BatchNorm1d(dim) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(self.dropout(torch.flatten(self.pool(x), 1)))
        return F.normalize(self.bn(x), dim=1)


def build_embedding_head(head: Callable[..., nn.Module], backbone: Backbone, image_size: int) -> nn.Module:
    """Complete a partial head config from the backbone: its channels, its preferred pooling
    (``embedding_pool``) and the side of its final map at ``image_size`` (each stride-2 conv
    rounds up), which a GDConv takes as its kernel.

    Raises:
        ConfigError: ``image_size`` is smaller than the backbone's total stride.
    """
    stride = int(backbone.strides[-1])
    if image_size < stride:
        raise ConfigError(
            f"data.image_size={image_size}: the embedding head needs images of at least the "
            f"backbone's total stride, {stride} pixels (MobileFaceNet: 112 in the paper)"
        )
    return head(
        in_channels=backbone.num_features,
        feature_size=math.ceil(image_size / stride),
        auto_pool=getattr(backbone, "embedding_pool", "avg"),
    )


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
