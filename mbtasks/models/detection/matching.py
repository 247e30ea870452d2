"""SSD's matching strategy (Liu et al. 2016, arXiv:1512.02325, Sec. 2.2 "Matching strategy").

Written by hand because it is the paper's own rule, in a few lines: every ground-truth box
takes the default box it overlaps best, then every default box whose IoU with some
ground truth reaches the threshold takes that ground truth. IoU comes from
:func:`torchvision.ops.box_iou`.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

BACKGROUND = -1


def match_default_boxes(gt_boxes: torch.Tensor, anchors: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Assign each default box a ground-truth index or background.

    Args:
        gt_boxes: ``(G, 4)`` ground-truth boxes, ``x1y1x2y2`` (G may be 0).
        anchors: ``(A, 4)`` default boxes, ``x1y1x2y2``, same units.
        iou_threshold: IoU from which a default box is a positive (0.5 in the paper).

    Returns:
        ``(A,)`` int64: the matched ground-truth index, or ``BACKGROUND`` (-1).
    """
    num_anchors = anchors.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=anchors.device)
    iou = box_iou(gt_boxes, anchors)  # (G, A)
    best_iou, matches = iou.max(dim=0)
    matches[best_iou < iou_threshold] = BACKGROUND
    # Bipartite part: each ground truth keeps its best default box even below the threshold.
    best_anchor = iou.argmax(dim=1)
    matches[best_anchor] = torch.arange(gt_boxes.shape[0], device=anchors.device)
    return matches
