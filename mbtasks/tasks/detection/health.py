"""Detection health checks on one validation epoch's detections (:mod:`mbtasks.tasks.health`).

Read from the rows :class:`~mbtasks.metrics.coco.CocoMeanAP` scored (all DDP ranks'):

- ``no_detections``: no detection reaches :data:`SHOWN_SCORE` (what ``mode=predict`` draws) on any image;
- ``same_box``: the best box of every image sits at the same place (within :data:`SAME_BOX` of
  the image side) while the ground-truth boxes move;
- ``no_objects_found``: mAP@0.5 below :data:`NO_MAP`.
"""

from __future__ import annotations

import math

import numpy as np

from mbtasks.tasks.detection.results import SHOWN_SCORE
from mbtasks.tasks.health import HealthWarning, TrainingFacts

# best boxes closer than this fraction of the image side on every image count as "the same box"
SAME_BOX = 0.02
# images with detections needed before "the same box everywhere" means anything
MIN_IMAGES = 3
# mAP@0.5 below this: the detector finds (almost) nothing
NO_MAP = 0.01


def _normalised(boxes: np.ndarray, ids: np.ndarray, images: np.ndarray) -> np.ndarray:
    """x1y1x2y2 original pixels of images ``ids`` as fractions of their image's width / height."""
    order = np.argsort(images[:, 0])
    rows = images[order[np.searchsorted(images[order, 0], ids)]]
    w, h = rows[:, 2:3], rows[:, 1:2]
    return boxes / np.concatenate([w, h, w, h], axis=1)


def check(
    images: np.ndarray, dets: np.ndarray, gts: np.ndarray, map_50: float, facts: TrainingFacts
) -> list[HealthWarning]:
    """Warnings from a validation epoch's rows (:class:`~mbtasks.metrics.coco.CocoMeanAP`'s layout).

    Args:
        images: ``(N, 5)`` ``(image_id, height, width, detections, ground truths)``, one row per image.
        dets: ``(D, 7)`` ``(image_id, x1, y1, x2, y2, score, label)``, original pixels.
        gts: ``(G, 8)`` ``(image_id, x1, y1, x2, y2, label, iscrowd, area)``, original pixels.
        map_50: the epoch's mAP@0.5 (NaN / -1: not measured).
        facts: how training went (for the likely cause).
    """
    images, dets, gts = (np.asarray(a, np.float64).reshape(-1, w) for a, w in ((images, 5), (dets, 7), (gts, 8)))
    if not len(images) or not len(gts):
        return []  # nothing to find: no statement about the detector
    cause = facts.likely_cause()
    n = len(images)
    warnings = []
    if not (dets[:, 5] >= SHOWN_SCORE).any():
        best = f"its best score is {dets[:, 5].max():.3f}" if len(dets) else "it outputs no box at all"
        warnings.append(
            HealthWarning(
                "no_detections",
                f"outputs nothing: no detection on the {n} validation images scores >= {SHOWN_SCORE:g} (what "
                f"mode=predict draws by default; {best}); {cause}",
            )
        )
    if len(dets):
        order = np.lexsort((dets[:, 5], dets[:, 0]))  # by image, best score last
        ids = dets[order, 0]
        last = np.r_[ids[1:] != ids[:-1], True]
        top = _normalised(dets[order][last, 1:5], ids[last], images)
        truth = _normalised(gts[:, 1:5], gts[:, 0], images)
        spread = float((top.max(0) - top.min(0)).max())
        truth_spread = float((truth.max(0) - truth.min(0)).max())
        if len(top) >= MIN_IMAGES and spread < SAME_BOX <= truth_spread / 2:
            box = ", ".join(f"{v:.2f}" for v in np.median(top, axis=0))
            warnings.append(
                HealthWarning(
                    "same_box",
                    f"puts its best box at the same place on all {len(top)} validation images with detections "
                    f"(x1y1x2y2 {box} of the image size, within {spread:.1%}) while the objects move; {cause}",
                )
            )
    if math.isfinite(map_50) and 0 <= map_50 < NO_MAP:
        warnings.append(
            HealthWarning(
                "no_objects_found",
                f"finds almost none of the validation objects: mAP@0.5 {map_50:.3f} on {n} images; {cause}",
            )
        )
    return warnings
