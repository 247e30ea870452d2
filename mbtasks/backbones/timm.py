"""Any timm model as a backbone, through ``features_only=True`` (timm's feature API)."""

from __future__ import annotations

import torch

from mbtasks.backbones.base import Backbone


class TimmBackbone(Backbone):
    """Wrap ``timm.create_model(name, features_only=True)`` in the backbone contract.

    Args:
        name: any timm model name that supports ``features_only`` (``mobilenetv3_large_100``,
            ``efficientnet_b0``, ``mobilenetv1_100`` ...).
        pretrained: ask timm for published weights (needs internet access).
        out_indices: timm feature levels (by reduction 2, 4, 8, 16, 32 for most models).
    """

    def __init__(self, name: str = "mobilenetv3_large_100", pretrained: bool = False, out_indices: tuple[int, ...] = (-1,)) -> None:
        super().__init__()
        import timm

        if name not in timm.list_models():
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise ValueError(f"backbone.name: unknown timm model {name!r}; close matches: {close}")
        probe = timm.create_model(name, pretrained=False, features_only=True)
        num_levels = len(probe.feature_info)
        indices = tuple(i + num_levels if i < 0 else i for i in out_indices)
        del probe
        self.model = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=indices)
        self.out_channels = list(self.model.feature_info.channels())
        self.strides = list(self.model.feature_info.reduction())
        self.width = 1.0

    @property
    def max_stride(self) -> int:
        return max(self.strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))
