"""Any timm model as a backbone, through ``features_only=True`` (timm's feature API)."""

from __future__ import annotations

import torch

from mbtasks.backbones.base import Backbone
from mbtasks.backbones.pretrained import (
    is_imagenet,
    is_published,
    load_pretrained,
    published_weights,
)


class TimmBackbone(Backbone):
    """Wrap ``timm.create_model(name, features_only=True)`` in the backbone contract.

    Args:
        name: any timm model name that supports ``features_only`` (``mobilenetv3_large_100``,
            ``efficientnet_b0``, ``mobilenetv1_100`` ...).
        pretrained: ``timm`` or ``imagenet`` (or ``true``): timm's published weights (needs internet
            or a filled Hugging Face cache); PATH: an mbtasks checkpoint or a state dict of this backbone;
            null: random init.
        out_indices: timm feature levels (by reduction 2, 4, 8, 16, 32 for most models).
    """

    def __init__(
        self,
        name: str = "mobilenetv3_large_100",
        pretrained: bool | str | None = None,
        out_indices: tuple[int, ...] = (-1,),
    ) -> None:
        super().__init__()
        import timm

        if name not in timm.list_models():
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise ValueError(f"backbone.name: unknown timm model {name!r}; close matches: {close}")
        probe = timm.create_model(name, pretrained=False, features_only=True)
        num_levels = len(probe.feature_info)
        indices = tuple(i + num_levels if i < 0 else i for i in out_indices)
        del probe
        timm_weights = is_published(pretrained) or is_imagenet(pretrained)
        if timm_weights:
            with published_weights(name):
                self.model = timm.create_model(name, pretrained=True, features_only=True, out_indices=indices)
        else:
            self.model = timm.create_model(name, pretrained=False, features_only=True, out_indices=indices)
        self.out_channels = list(self.model.feature_info.channels())
        self.strides = list(self.model.feature_info.reduction())
        self.width = 1.0
        if not timm_weights:
            self.pretrained_report = load_pretrained(self, pretrained)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))
