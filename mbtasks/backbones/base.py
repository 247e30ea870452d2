"""The backbone contract shared by every task.

A backbone maps images ``(N, 3, H, W)`` to a list of feature maps, finest first,
and declares them through ``out_channels`` and ``strides``. Heads size themselves
from these two lists and never hard-code channel counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from mbtasks.backbones.blocks import InvertedResidual, init_weights
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


class Tap(NamedTuple):
    """Where a returned feature map is read: after block ``self.blocks[i]`` (the key of ``Backbone.taps``), or
    from its expansion conv (``expand``: an :class:`InvertedResidual`'s ``forward_expand``)."""

    level: int
    expand: bool = False


def reduction(module: nn.Module) -> int:
    """How much ``module`` shrinks the map: the product of its convs' strides (its convs run in sequence)."""
    return math.prod(m.stride[0] for m in module.modules() if isinstance(m, nn.Conv2d))


def feature_levels(stem: nn.Module, blocks: Sequence[nn.Module]) -> list[tuple[int, int]]:
    """``(index of the level's last block, its out_channels)`` per feature level, finest first: a level ends
    at the last block of its stride."""
    levels: dict[int, tuple[int, int]] = {}
    stride = reduction(stem)
    for i, block in enumerate(blocks):
        stride *= reduction(block)
        levels[LEVEL_STRIDES.index(stride)] = (i, block.out_channels)
    return [levels[lvl] for lvl in sorted(levels)]


class Backbone(nn.Module):
    """Base class: subclasses set ``out_channels``, ``strides`` and ``width`` and return ``list[Tensor]``.

    The MobileNets build ``self.stem`` and ``self.blocks`` by hand (each paper's table) and end with
    :meth:`finish`, which picks the returned levels; their forward is this class's. Others (timm) set the
    lists themselves and override ``forward``.

    ``pretrained`` (``backbone.pretrained``: PATH | ``timm`` | null) is a constructor argument of
    every backbone; what the load did is kept as ``pretrained_report``.
    """

    out_channels: list[int]
    strides: list[int]
    width: float = 1.0
    pretrained_report: LoadReport | None = None

    def finish(self, out_indices: Sequence[int], pretrained, expansion_taps: bool = False) -> None:
        """The end of a MobileNet constructor that set ``self.stem`` and ``self.blocks`` (an ``nn.Sequential``).

        Finds the feature levels from the blocks' strides (:func:`feature_levels`), picks the returned
        ones (``out_indices``), sets ``out_indices``, ``out_channels``, ``strides`` and the taps read by
        :meth:`forward`, then initialises the weights and loads ``pretrained``.

        Args:
            out_indices: levels to return (negatives count from the coarsest).
            pretrained: ``backbone.pretrained`` (:func:`~mbtasks.backbones.pretrained.load_pretrained`).
            expansion_taps: read a level from the expansion conv of the block after it, where that block is
                an :class:`InvertedResidual` (SSDLite, Sandler et al. Sec. 6.2), instead of the level's output.
        """
        levels = feature_levels(self.stem, self.blocks)
        self.out_indices = resolve_out_indices(out_indices, len(levels))
        self.taps: dict[int, Tap] = {}
        channels = []
        for lvl in self.out_indices:
            end, out_channels = levels[lvl]
            after = self.blocks[end + 1] if end + 1 < len(self.blocks) else None
            if expansion_taps and isinstance(after, InvertedResidual):
                self.taps[end + 1] = Tap(lvl, expand=True)
                channels.append(after.hidden_channels)
            else:
                self.taps[end] = Tap(lvl)
                channels.append(out_channels)
        self.out_channels = channels
        self.strides = [LEVEL_STRIDES[lvl] for lvl in self.out_indices]
        self._last_block = max(self.taps)
        init_weights(self)
        self.pretrained_report = load_pretrained(self, pretrained)

    @property
    def num_features(self) -> int:
        """Channels of the last (coarsest) returned feature map."""
        return self.out_channels[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``self.stem`` then ``self.blocks``, returning the tapped maps (:meth:`finish`); stops after the last."""
        x = self.stem(x)
        feats = []
        for i, block in enumerate(self.blocks):
            tap = self.taps.get(i)
            if tap is not None and tap.expand:
                expanded = block.forward_expand(x)
                feats.append(expanded)
                if i < self._last_block:
                    x = block.forward_rest(x, expanded)
            else:
                x = block(x)
                if tap is not None:
                    feats.append(x)
            if i == self._last_block:
                break
        return feats
