"""SSD box coding (Liu et al. 2016, arXiv:1512.02325, Eq. 2), with the variance weights of the
reference implementations ((10, 10, 5, 5) = 1 / (0.1, 0.1, 0.2, 0.2)).

Written by hand because it *is* the paper's parameterisation (a few lines); the box-format
conversions come from :func:`torchvision.ops.box_convert`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.ops import box_convert

# exp() of a regressed log-size is clamped so a wild prediction cannot overflow (torchvision's bound).
_MAX_LOG_SIZE = math.log(1000.0 / 16)


class BoxCoder:
    """Encode boxes as offsets from default boxes and back.

    With default box ``(cx_a, cy_a, w_a, h_a)`` and weights ``(wx, wy, ww, wh)``::

        t = (wx (cx - cx_a) / w_a,  wy (cy - cy_a) / h_a,  ww log(w / w_a),  wh log(h / h_a))

    Args:
        weights: ``(wx, wy, ww, wh)``; (10, 10, 5, 5) in SSD / TF detection API.
    """

    def __init__(self, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> None:
        if len(weights) != 4 or any(float(w) <= 0 for w in weights):
            raise ValueError(f"task.box_weights: expected 4 positive numbers, got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Regression targets.

        Args:
            boxes: ``(..., 4)`` ground-truth boxes, ``x1y1x2y2``.
            anchors: ``(..., 4)`` default boxes, ``x1y1x2y2`` (same shape as ``boxes``).

        Returns:
            ``(..., 4)`` offsets ``(tx, ty, tw, th)``.
        """
        wx, wy, ww, wh = self.weights
        g = box_convert(boxes, "xyxy", "cxcywh")
        a = box_convert(anchors, "xyxy", "cxcywh")
        eps = torch.finfo(g.dtype).eps
        return torch.stack(
            (
                wx * (g[..., 0] - a[..., 0]) / a[..., 2],
                wy * (g[..., 1] - a[..., 1]) / a[..., 3],
                ww * torch.log(g[..., 2].clamp(min=eps) / a[..., 2]),
                wh * torch.log(g[..., 3].clamp(min=eps) / a[..., 3]),
            ),
            dim=-1,
        )

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`.

        Args:
            deltas: ``(..., A, 4)`` predicted offsets.
            anchors: ``(A, 4)`` default boxes, ``x1y1x2y2`` (broadcast over leading dims).

        Returns:
            ``(..., A, 4)`` boxes, ``x1y1x2y2``, same units as ``anchors``.
        """
        wx, wy, ww, wh = self.weights
        a = box_convert(anchors, "xyxy", "cxcywh")
        cx = deltas[..., 0] / wx * a[..., 2] + a[..., 0]
        cy = deltas[..., 1] / wy * a[..., 3] + a[..., 1]
        w = torch.exp((deltas[..., 2] / ww).clamp(max=_MAX_LOG_SIZE)) * a[..., 2]
        h = torch.exp((deltas[..., 3] / wh).clamp(max=_MAX_LOG_SIZE)) * a[..., 3]
        return box_convert(torch.stack((cx, cy, w, h), dim=-1), "cxcywh", "xyxy")
