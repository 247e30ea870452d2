"""From raw SSD outputs to detections: softmax, score threshold, per-class NMS
(:func:`torchvision.ops.batched_nms`), keep the best ``max_detections``."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, clip_boxes_to_image

from mbtasks.heads.box_coding import BoxCoder


def postprocess_detections(
    cls_logits: torch.Tensor,
    bbox_regression: torch.Tensor,
    anchors: torch.Tensor,
    box_coder: BoxCoder,
    image_size: tuple[int, int],
    score_threshold: float = 0.01,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    topk_candidates: int = 400,
) -> list[dict[str, torch.Tensor]]:
    """Detections of each image.

    Args:
        cls_logits: ``(N, A, K + 1)`` logits, class 0 is background.
        bbox_regression: ``(N, A, 4)`` offsets from the default boxes.
        anchors: ``(A, 4)`` default boxes, ``x1y1x2y2`` input pixels.
        box_coder: the offsets' parameterisation.
        image_size: network input ``(H, W)``; boxes are clipped to it.
        score_threshold: class scores below this are dropped before NMS.
        nms_iou: IoU above which a lower-scoring box of the same class is suppressed.
        max_detections: detections kept per image after NMS.
        topk_candidates: best (box, class) pairs per image that enter NMS.

    Returns:
        per image ``{"boxes": (D, 4) x1y1x2y2 input pixels, "scores": (D,), "labels": (D,) int64 in [0, K)}``,
        sorted by decreasing score.
    """
    scores_all = cls_logits.softmax(dim=-1)[..., 1:]
    boxes_all = clip_boxes_to_image(box_coder.decode(bbox_regression, anchors), image_size)
    num_classes = scores_all.shape[-1]
    results = []
    for scores, boxes in zip(scores_all, boxes_all, strict=True):
        flat = scores.flatten()
        keep = torch.nonzero(flat > score_threshold).squeeze(1)
        if keep.numel() > topk_candidates:
            keep = keep[flat[keep].topk(topk_candidates).indices]
        anchor_idx, labels = keep // num_classes, keep % num_classes
        cand_boxes, cand_scores = boxes[anchor_idx], flat[keep]
        kept = batched_nms(cand_boxes, cand_scores, labels, nms_iou)[:max_detections]
        results.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": labels[kept]})
    return results
