"""MobileNet building blocks: the paper's own ideas, written by hand.

- Depthwise-separable convolution (MobileNet V1, Howard et al. 2017, arXiv:1704.04861, Fig. 3).
- Inverted residual with linear bottleneck (MobileNet V2, Sandler et al. 2018, arXiv:1801.04381).

These are plain ``nn.Module`` s with no knowledge of tasks, configs or Lightning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mbtasks.errors import ConfigError, suggest

ActLayer = Callable[..., nn.Module]

ACTIVATIONS: dict[str, ActLayer] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
}


class PReLU(nn.PReLU):
    """Per-channel PReLU (He et al. 2015, arXiv:1502.01852), as MobileFaceNets use it.

    ``per_channel`` tells :class:`ConvBNAct` to pass the channel count instead of ``inplace``.
    """

    per_channel = True

    def __init__(self, channels: int) -> None:
        super().__init__(num_parameters=channels)


def get_activation(name: str) -> ActLayer:
    """Activation class by name (``relu``, ``relu6``, ``hardswish``, ``silu``)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


# backbone.padding: symmetric (PyTorch's k // 2 on every side) | tf_same (TensorFlow's SAME, which
# TF-trained weights need: a stride-2 conv on an even input pads 0 before and 1 after)
PADDINGS = ("symmetric", "tf_same")


def check_padding(padding: str) -> str:
    """Return ``padding`` if it is one of :data:`PADDINGS`, else raise naming ``backbone.padding``."""
    if padding not in PADDINGS:
        raise ConfigError(
            f"backbone.padding: unknown value {padding!r}; expected one of {', '.join(PADDINGS)} "
            f"(tf_same reproduces TensorFlow's SAME padding, for TF-trained weights)."
            f"{suggest(padding, PADDINGS)}"
        )
    return padding


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, padding: str) -> nn.Conv2d:
    """A bias-free ``nn.Conv2d`` (or subclass) with ``symmetric`` or ``tf_same`` padding.

    ``tf_same`` is TensorFlow's SAME: ``total = max((ceil(in / s) - 1) * s + k - in, 0)``,
    ``total // 2`` before and the rest after. timm builds it: a plain ``nn.Conv2d`` with ``k // 2``
    padding where that is the same (stride 1, odd k), else ``Conv2dSame``, an ``nn.Conv2d``
    subclass that pads from the input's size at run time (static ints when exported). Both keep
    the state-dict key ``weight``, so checkpoints load either way.
    """
    if check_padding(padding) == "tf_same":
        from timm.layers import create_conv2d  # timm loads lazily, as everywhere in mbtasks

        return create_conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding="same", groups=groups, bias=False
        )
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
    )


def round_channels(channels: float, multiplier: float = 1.0, divisor: int = 8) -> int:
    """Scale ``channels`` by the width multiplier and round to a multiple of ``divisor``.

    The single place where width scaling lives (the paper's alpha). Rounds to the
    nearest multiple, never below ``divisor`` and never more than 10% below the
    exact scaled value (the rule of the TF/timm reference implementations).
    """
    if multiplier <= 0:
        raise ValueError(f"width multiplier must be > 0, got {multiplier}")
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def init_weights(module: nn.Module) -> None:
    """He (fan-out) init for convs, unit BN, small linear: trains from scratch faster than
    PyTorch's default uniform init (the torchvision / timm MobileNet recipe)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation (``act_layer=None`` for linear).

    ``padding``: ``symmetric`` (``k // 2`` each side) or ``tf_same`` (TensorFlow's SAME, see
    :func:`conv2d`); the module's keys (``0.weight``, ``1.*``) are the same for both.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act_layer: ActLayer | None = nn.ReLU,
        padding: str = "symmetric",
    ) -> None:
        layers: list[nn.Module] = [
            conv2d(in_channels, out_channels, kernel_size, stride, groups, padding),
            nn.BatchNorm2d(out_channels),
        ]
        if act_layer is not None:
            # PReLU learns one slope per channel, so it is built with the channel count
            layers.append(
                act_layer(out_channels) if getattr(act_layer, "per_channel", False) else act_layer(inplace=True)
            )
        super().__init__(*layers)
        self.out_channels = out_channels


class DepthwiseSeparableConv(nn.Module):
    """3x3 depthwise conv + BN + act, then 1x1 pointwise conv + BN + act (V1, Fig. 3 right).

    Args:
        in_channels: input channels C.
        out_channels: output channels of the pointwise conv.
        stride: stride of the depthwise conv (1 or 2).
        act_layer: activation class (the paper uses ReLU; timm's port uses ReLU6).
        padding: ``symmetric`` or ``tf_same`` (:class:`ConvBNAct`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        act_layer: ActLayer = nn.ReLU,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        self.conv_dw = ConvBNAct(in_channels, in_channels, 3, stride, in_channels, act_layer, padding)
        self.conv_pw = ConvBNAct(in_channels, out_channels, 1, 1, 1, act_layer, padding)
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dw(x))


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> linear 1x1 projection, with a residual when shapes allow.

    Args:
        in_channels: input channels.
        out_channels: output channels (the linear bottleneck).
        stride: depthwise stride (1 or 2); the residual exists only for stride 1 and equal channels.
        expand_ratio: expansion factor t (6 in the V2 paper; 1 skips the expansion conv).
        act_layer: activation after expansion and depthwise (ReLU6 in the paper).
        padding: ``symmetric`` or ``tf_same`` (:class:`ConvBNAct`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expand_ratio: float = 6,
        act_layer: ActLayer = nn.ReLU6,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv_expand = (
            ConvBNAct(in_channels, hidden, 1, act_layer=act_layer, padding=padding) if expand_ratio != 1 else None
        )
        self.conv_dw = ConvBNAct(hidden, hidden, 3, stride, hidden, act_layer, padding)
        self.conv_project = ConvBNAct(hidden, out_channels, 1, act_layer=None, padding=padding)
        self.hidden_channels = hidden
        self.out_channels = out_channels
        self.stride = stride

    def forward_expand(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the expansion conv (what SSDLite taps at the stride-16 level)."""
        return x if self.conv_expand is None else self.conv_expand(x)

    def forward_rest(self, x: torch.Tensor, expanded: torch.Tensor) -> torch.Tensor:
        out = self.conv_project(self.conv_dw(expanded))
        return x + out if self.use_residual else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_rest(x, self.forward_expand(x))
