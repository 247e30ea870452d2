"""SSD's training objective (Liu et al. 2016, arXiv:1512.02325, Eq. 1 and Sec. 2.2 "Hard negative mining").

``L = (L_conf + alpha L_loc) / N``: smooth-L1 on the encoded offsets of positive default
boxes, softmax cross-entropy on positives plus the hardest negatives (at most
``neg_pos_ratio`` negatives per positive, per image), both divided by the number of
positives ``N`` in the batch. Written by hand because it is the paper's definition; the
pieces (IoU, cross-entropy, smooth-L1) come from torch / torchvision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mbtasks.models.detection.box_coding import BoxCoder
from mbtasks.models.detection.matching import BACKGROUND, match_default_boxes


def hard_negative_mask(
    cls_loss: torch.Tensor, positive: torch.Tensor, neg_pos_ratio: float, min_negatives: int = 0
) -> torch.Tensor:
    """The negatives kept for the classification loss: the highest-loss ones, per image.

    Args:
        cls_loss: ``(N, A)`` per-default-box cross-entropy.
        positive: ``(N, A)`` bool, default boxes matched to a ground truth.
        neg_pos_ratio: negatives per positive (3 in the paper).
        min_negatives: negatives kept even in an image without positives (so empty
            images still teach "background"); 0 is the paper's rule.

    Returns:
        ``(N, A)`` bool mask of the selected negatives (disjoint from ``positive``).
    """
    num_neg = (positive.sum(dim=1, keepdim=True) * neg_pos_ratio).floor().long().clamp(min=min_negatives)
    num_neg = torch.minimum(num_neg, (~positive).sum(dim=1, keepdim=True))
    loss = cls_loss.detach().clone()
    loss[positive] = -float("inf")
    order = loss.argsort(dim=1, descending=True)
    rank = order.argsort(dim=1)
    return rank < num_neg


class SSDLoss(nn.Module):
    """Match default boxes to ground truth and compute the SSD loss.

    Args:
        box_coder: the offsets' parameterisation.
        iou_threshold: matching threshold (0.5).
        neg_pos_ratio: hard-negative ratio (3).
        min_negatives: negatives per image kept without positives (0 = paper).
        box_loss_weight: the paper's alpha (1).
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        iou_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        min_negatives: int = 0,
        box_loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.box_coder = box_coder
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.min_negatives = min_negatives
        self.box_loss_weight = box_loss_weight

    @torch.no_grad()
    def targets(
        self, anchors: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-default-box class and regression targets.

        Args:
            anchors: ``(A, 4)`` default boxes, ``x1y1x2y2`` in input pixels.
            targets: per image ``{"boxes": (M, 4) x1y1x2y2 input pixels, "labels": (M,) int64 in [0, K)}``.

        Returns:
            ``(N, A)`` int64 classes (0 = background, ``label + 1`` otherwise) and
            ``(N, A, 4)`` encoded offsets (meaningful where the class is not background).
        """
        classes, offsets = [], []
        for t in targets:
            boxes = t["boxes"].to(anchors)
            matches = match_default_boxes(boxes, anchors, self.iou_threshold)
            matched = matches.clamp(min=0)
            if boxes.numel():
                cls = t["labels"].to(anchors.device)[matched] + 1
                reg = self.box_coder.encode(boxes[matched], anchors)
            else:
                cls = torch.zeros_like(matches)
                reg = torch.zeros_like(anchors)
            cls[matches == BACKGROUND] = 0
            classes.append(cls)
            offsets.append(reg)
        return torch.stack(classes), torch.stack(offsets)

    def forward(
        self,
        cls_logits: torch.Tensor,
        bbox_regression: torch.Tensor,
        anchors: torch.Tensor,
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """The loss of one batch.

        Args:
            cls_logits: ``(N, A, K + 1)``, class 0 is background.
            bbox_regression: ``(N, A, 4)`` predicted offsets.
            anchors: ``(A, 4)`` default boxes, ``x1y1x2y2`` input pixels.
            targets: per image ``boxes`` ``(M, 4)`` ``x1y1x2y2`` input pixels and ``labels`` ``(M,)`` in [0, K).

        Returns:
            ``{"loss", "loss_box", "loss_cls", "num_positives"}`` (scalars).
        """
        classes, offsets = self.targets(anchors, targets)
        positive = classes > 0
        num_pos = positive.sum()
        norm = num_pos.clamp(min=1).to(cls_logits.dtype)
        box_loss = F.smooth_l1_loss(bbox_regression[positive], offsets[positive], reduction="sum", beta=1.0) / norm
        cls_loss = F.cross_entropy(cls_logits.flatten(0, 1), classes.flatten(), reduction="none").view_as(classes)
        negative = hard_negative_mask(cls_loss, positive, self.neg_pos_ratio, self.min_negatives)
        conf_loss = cls_loss[positive | negative].sum() / norm
        return {
            "loss": conf_loss + self.box_loss_weight * box_loss,
            "loss_box": box_loss.detach(),
            "loss_cls": conf_loss.detach(),
            "num_positives": num_pos.detach().float(),
        }
