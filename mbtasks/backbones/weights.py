"""Weight conversion from published MobileNet implementations to ours.

timm's ``mobilenetv1_100`` and torchvision's ``mobilenet_v2`` hold the same tensors as
our :class:`Classifier` (V1 / V2 backbone + FC head) in the same order, so the
conversion maps tensors by position and checks every shape. This lets published
ImageNet weights serve our backbones when a user has them on disk.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn


def convert_by_position(source: Mapping[str, torch.Tensor], target: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s state-dict keys, in order, checking shapes.

    Raises:
        ValueError: if the tensor counts or any shape differ (naming both keys).
    """
    dst = target.state_dict()
    src_items = list(source.items())
    if len(src_items) != len(dst):
        raise ValueError(
            f"cannot convert: source has {len(src_items)} tensors, target {type(target).__name__} "
            f"has {len(dst)}; architectures or widths differ"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(src_items, dst.items(), strict=True):
        if tensor.shape != ref.shape:
            raise ValueError(
                f"cannot convert: source {src_key} has shape {tuple(tensor.shape)} but target "
                f"{dst_key} expects {tuple(ref.shape)}; check the width multiplier"
            )
        out[dst_key] = tensor
    return out


def load_foreign_classifier(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a timm V1 / torchvision V2 state dict into our classifier (strict)."""
    model.load_state_dict(convert_by_position(state, model))
