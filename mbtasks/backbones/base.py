"""The backbone contract shared by every task.

A backbone maps images ``(N, 3, H, W)`` to a list of feature maps, finest first,
and declares them through ``out_channels`` and ``strides``. Heads size themselves
from these two lists and never hard-code channel counts.
"""

from __future__ import annotations

import torch
from torch import nn

from mbtasks.backbones.blocks import init_weights
from mbtasks.backbones.pretrained import LoadReport, load_pretrained

# Feature levels are indexed by reduction: level i has stride 2 ** (i + 1).
LEVEL_STRIDES = (2, 4, 8, 16, 32)


def resolve_out_indices(out_indices: tuple[int, ...] | list[int], num_levels: int) -> tuple[int, ...]:
    """Normalise level indices (negatives count from the end) and check their range."""
    resolved = []
    for idx in out_indices:
        level = idx + num_levels if idx < 0 else idx
        if not 0 <= level < num_levels:
            raise ValueError(
                f"backbone.out_indices: level {idx} out of range; valid levels are "
                f"0..{num_levels - 1} (strides {list(LEVEL_STRIDES[:num_levels])}) or negatives"
            )
        resolved.append(level)
    if len(set(resolved)) != len(resolved) or resolved != sorted(resolved):
        raise ValueError(f"backbone.out_indices must be increasing and unique, got {list(out_indices)}")
    return tuple(resolved)


class Backbone(nn.Module):
    """Base class: subclasses set ``out_channels``, ``strides`` and ``width`` and return ``list[Tensor]``.

    ``pretrained`` (``backbone.pretrained``: PATH | ``timm`` | null) is a constructor argument of
    every backbone; what the load did is kept as ``pretrained_report``.
    """

    out_channels: list[int]
    strides: list[int]
    width: float = 1.0
    pretrained_report: LoadReport | None = None

    def finish(self, out_indices: tuple[int, ...], channels: list[int], taps: dict, pretrained) -> None:
        """The end of a MobileNet constructor: the returned levels, the tap table (block index -> what
        to return there; forward stops after the last), initial weights, then ``pretrained`` loaded."""
        self.out_channels = list(channels)
        self.strides = [LEVEL_STRIDES[lvl] for lvl in out_indices]
        self._taps = taps
        self._last_block = max(taps)
        init_weights(self)
        self.pretrained_report = load_pretrained(self, pretrained)

    @property
    def num_features(self) -> int:
        """Channels of the last (coarsest) returned feature map."""
        return self.out_channels[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
