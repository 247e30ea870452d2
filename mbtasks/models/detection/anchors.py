"""SSD default boxes (Liu et al., "SSD: Single Shot MultiBox Detector", 2016, arXiv:1512.02325, Sec. 2.2).

The boxes come from torchvision's :class:`~torchvision.models.detection.anchor_utils.DefaultBoxGenerator`
(the paper's scales ``s_k``, the extra ``s'_k = sqrt(s_k s_{k+1})`` box and two boxes per aspect
ratio ``a`` and ``1/a``); this module only adapts it to plain tensors and caches the result
per (image size, grid sizes), since the boxes are the same for every batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList


class DefaultBoxes(nn.Module):
    """Default boxes for every cell of every prediction map.

    Args:
        aspect_ratios: per prediction map, the aspect ratios ``a`` besides 1 (each adds the
            boxes ``a`` and ``1/a``). A single entry is used for every map.
        min_ratio / max_ratio: smallest and largest scale ``s_min`` / ``s_max`` (fractions of the
            image side), spread linearly over the maps when ``scales`` is not given.
        scales: explicit scales, one per map plus one more (the last feeds ``s'_k`` of the
            coarsest map); overrides ``min_ratio`` / ``max_ratio``.
        clip: clip box sizes to the image (the paper's and torchvision's behaviour).

    The number of maps is fixed when :meth:`build` is called with the detector's map count.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[Sequence[float]] = ((2.0, 3.0),),
        min_ratio: float = 0.2,
        max_ratio: float = 0.95,
        scales: Sequence[float] | None = None,
        clip: bool = True,
    ) -> None:
        super().__init__()
        if not aspect_ratios:
            raise ValueError("head.anchors.aspect_ratios: give at least one list (e.g. [[2, 3]])")
        for ratios in aspect_ratios:
            if any(float(r) <= 0 for r in ratios):
                raise ValueError(f"head.anchors.aspect_ratios: ratios must be > 0, got {list(ratios)}")
        if not 0 < min_ratio < max_ratio <= 1.0:
            raise ValueError(f"head.anchors: need 0 < min_ratio < max_ratio <= 1, got {min_ratio}, {max_ratio}")
        self.aspect_ratios = [[float(r) for r in ratios] for ratios in aspect_ratios]
        self.min_ratio, self.max_ratio = float(min_ratio), float(max_ratio)
        self.scales = None if scales is None else [float(s) for s in scales]
        self.clip = clip
        self.generator: DefaultBoxGenerator | None = None
        self._cache: dict[tuple, torch.Tensor] = {}

    def build(self, num_maps: int) -> DefaultBoxes:
        """Fix the number of prediction maps; called once by the detector.

        Raises:
            ValueError: ``aspect_ratios`` or ``scales`` do not fit ``num_maps`` (names the key).
        """
        ratios = self.aspect_ratios
        if len(ratios) == 1:
            ratios = ratios * num_maps
        if len(ratios) != num_maps:
            raise ValueError(
                f"head.anchors.aspect_ratios has {len(ratios)} entries but the detector predicts from "
                f"{num_maps} maps (backbone maps + head.extra_channels); give one list per map or a single list"
            )
        if self.scales is not None and len(self.scales) != num_maps + 1:
            raise ValueError(
                f"head.anchors.scales has {len(self.scales)} values but needs {num_maps + 1} "
                f"(one per prediction map plus one for the last map's extra box)"
            )
        self.generator = DefaultBoxGenerator(ratios, self.min_ratio, self.max_ratio, scales=self.scales, clip=self.clip)
        self._cache.clear()
        return self

    def num_anchors_per_location(self) -> list[int]:
        """Boxes per cell for each map: ``2 + 2 * len(aspect_ratios[k])``."""
        return self._require().num_anchors_per_location()

    def _require(self) -> DefaultBoxGenerator:
        if self.generator is None:
            raise RuntimeError("DefaultBoxes.build(num_maps) must be called before use")
        return self.generator

    def forward(
        self, image_size: tuple[int, int], grid_sizes: Sequence[tuple[int, int]], device: torch.device | None = None
    ) -> torch.Tensor:
        """Default boxes for one image size.

        Args:
            image_size: network input ``(H, W)`` in pixels.
            grid_sizes: ``(h_k, w_k)`` of each prediction map, finest first.
            device: where the boxes should live.

        Returns:
            ``(A, 4)`` boxes, ``x1y1x2y2`` in input pixels, ordered map by map, then cell
            (row-major), then box type: the order of the head's outputs.
        """
        key = (tuple(image_size), tuple(tuple(int(v) for v in g) for g in grid_sizes), str(device))
        boxes = self._cache.get(key)
        if boxes is None:
            probe = ImageList(torch.empty(1, 0, *image_size), [tuple(image_size)])
            maps = [torch.empty(1, 0, int(h), int(w)) for h, w in grid_sizes]
            boxes = self._require()(probe, maps)[0].to(device)
            self._cache[key] = boxes
        return boxes
