"""Published ImageNet weights, converted to ours.

- timm's ``mobilenetv1_*`` / ``mobilenetv2_*`` and torchvision's ``mobilenet_v2`` hold the same
  tensors as our :class:`Classifier` (V1 / V2 backbone + FC head) in the same order:
  :func:`convert_by_position` maps them by position and checks every shape;
- TF-slim frozen graphs (:mod:`.tf_graph`) and Google's uint8 TFLite files (:mod:`.tflite`) are
  read by name and dequantised.

Every converter returns a :class:`Converted`: our classifier's state dict plus what the network
must look like to reproduce the original (activation, padding, input normalisation).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF-slim's inputs: x / 127.5 - 1
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)


@dataclass
class Converted:
    """A published classifier as our ``Classifier(backbone, ClassifierHead(C, 1000))``.

    Attributes:
        state_dict: keys ``backbone.*`` and ``head.fc.{weight,bias}`` (1000 ImageNet classes in the
            standard sorted-wnid order; TF's background logit 0 is dropped).
        arch: our backbone class name (``MobileNetV1`` / ``MobileNetV2``).
        width: the width multiplier.
        image_size: the input side the weights were trained at.
        act: ``backbone.act`` that reproduces the original (``relu6`` for TF and torchvision).
        padding: ``backbone.padding``: ``symmetric`` (PyTorch) or ``tf_same`` (TF's SAME).
        mean, std: input normalisation of the original (``data.mean`` / ``data.std``).
        bn_folded: the source had BatchNorm folded into the convolutions (TFLite): every BatchNorm
            here starts as the identity, with the folded bias as its shift.
        source: what was read (for the load report).
    """

    state_dict: OrderedDict[str, torch.Tensor]
    arch: str
    width: float
    image_size: int
    act: str = "relu6"
    padding: str = "symmetric"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    bn_folded: bool = False
    source: str = ""
    notes: list[str] = field(default_factory=list)


# the first tensor of each library's MobileNets: it tells the library apart and gives the width
STEM_KEYS = {"torchvision": "features.0.0.weight", "timm": "conv_stem.weight"}


def foreign_origin(state: Mapping[str, object]) -> tuple[str, str] | None:
    """``(library, our backbone class)`` of a torchvision / timm MobileNet state dict, ``None`` for others."""
    if STEM_KEYS["torchvision"] in state:
        return "torchvision", "MobileNetV2"
    if STEM_KEYS["timm"] in state:
        return "timm", "MobileNetV2" if any(k.startswith("conv_head") for k in state) else "MobileNetV1"
    return None


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
