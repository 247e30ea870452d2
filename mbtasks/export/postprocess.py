"""Detection post-processing for exported detectors, in numpy only (no torch at deployment).

The exported graph returns per-anchor class probabilities and decoded boxes
(:class:`mbtasks.tasks.detection.export.DetectorGraph`); this module does the rest exactly as
:func:`mbtasks.models.detection.postprocess.postprocess_detections` does in PyTorch: score threshold, the
best ``topk_candidates`` (box, class) pairs, per-class greedy NMS, the best ``max_detections``::

    import json, onnxruntime as ort
    meta = json.load(open("detection.json"))
    scores, boxes = ort.InferenceSession("detection.onnx").run(None, {"images": batch})
    dets = detections_from_outputs(scores, boxes, **meta["thresholds"])
"""

from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression (:func:`torchvision.ops.nms`'s rule).

    Args:
        boxes: ``(M, 4)`` x1y1x2y2.
        scores: ``(M,)``.
        iou_threshold: a box overlapping a kept, higher-scoring box by IoU > this is dropped.

    Returns:
        indices of the kept boxes, by decreasing score.
    """
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, np.finfo(np.float32).tiny)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each label: boxes of different labels are shifted apart so they never overlap."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = labels.astype(boxes.dtype) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def detections_from_outputs(
    scores: np.ndarray,
    boxes: np.ndarray,
    score_threshold: float = 0.01,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    topk_candidates: int = 1000,
) -> list[dict[str, np.ndarray]]:
    """Detections per image from the exported detector's outputs.

    Args:
        scores: ``(N, A, K)`` class probabilities (output ``scores``).
        boxes: ``(N, A, 4)`` x1y1x2y2 input pixels (output ``boxes``).
        score_threshold / nms_iou / max_detections / topk_candidates: the checkpoint's values,
            stored in the export's metadata under ``thresholds``.

    Returns:
        per image ``{"boxes": (D, 4), "scores": (D,), "labels": (D,) int64 in [0, K)}``, by decreasing
        score; boxes in input pixels (scale by ``original / input`` size for the original image).
    """
    num_classes = scores.shape[-1]
    results = []
    for img_scores, img_boxes in zip(scores, boxes, strict=True):
        flat = img_scores.reshape(-1)
        keep = np.nonzero(flat > score_threshold)[0]
        if keep.size > topk_candidates:
            keep = keep[np.argsort(-flat[keep], kind="stable")[:topk_candidates]]
        anchor_idx, labels = keep // num_classes, keep % num_classes
        cand_boxes, cand_scores = img_boxes[anchor_idx], flat[keep]
        kept = batched_nms(cand_boxes, cand_scores, labels, nms_iou)[:max_detections]
        results.append(
            {"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": labels[kept].astype(np.int64)}
        )
    return results
