"""From raw SSD outputs to detections: softmax, score threshold, per-class NMS
(:func:`torchvision.ops.batched_nms`), keep the best ``max_detections``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import batched_nms

from mbtasks.models.detection.box_coding import BoxCoder

# (box, class) pairs per image that enter NMS; the shipped numpy NMS (mbtasks.export.postprocess,
# which imports no mbtasks code) repeats the value
TOPK_CANDIDATES = 1000


def decode(
    cls_logits: torch.Tensor,
    bbox_regression: torch.Tensor,
    anchors: torch.Tensor,
    box_coder: BoxCoder,
    image_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``(N, A, K)`` (softmax, background column dropped) and boxes ``(N, A, 4)``
    x1y1x2y2 in input pixels, decoded from the default boxes and clipped to the image.

    The clipping is a min/max clamp (what :func:`torchvision.ops.clip_boxes_to_image` computes) so
    that the export graph can trace it.
    """
    scores = cls_logits.softmax(dim=-1)[..., 1:]
    boxes = box_coder.decode(bbox_regression, anchors)
    h, w = image_size
    return scores, torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]))


def postprocess_detections(
    cls_logits: torch.Tensor,
    bbox_regression: torch.Tensor,
    anchors: torch.Tensor,
    box_coder: BoxCoder,
    image_size: tuple[int, int],
    score_threshold: float = 0.01,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    topk_candidates: int = TOPK_CANDIDATES,
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
    scores_all, boxes_all = decode(cls_logits, bbox_regression, anchors, box_coder, image_size)
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


def to_original(
    detections: list[dict[str, torch.Tensor]], input_size: tuple[int, int], orig_sizes: Sequence[tuple[int, int]]
) -> list[dict[str, torch.Tensor]]:
    """Rescale boxes from network input pixels to each image's original pixels.

    Args:
        detections: per image ``boxes (D, 4)`` x1y1x2y2 in input pixels (+ scores, labels).
        input_size: network input ``(H, W)``.
        orig_sizes: original ``(h, w)`` per image (the eval pipeline only resizes).
    """
    out = []
    for det, (h, w) in zip(detections, orig_sizes, strict=True):
        scale = det["boxes"].new_tensor([w / input_size[1], h / input_size[0]] * 2)
        out.append({**det, "boxes": det["boxes"] * scale})
    return out
