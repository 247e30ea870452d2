"""WIDER FACE's face-detection AP, as its official evaluation computes it (numpy).

Yang et al., "WIDER FACE: A Face Detection Benchmark", CVPR 2016; the protocol is eval_tools'
``wider_eval.m`` (and its Python port, wondervictor/WiderFace-Evaluation ``evaluation.py``):

- Scores are min-max normalised over **all** predictions of the set, then cut at 1000 thresholds
  ``t = 1 - (k + 1) / 1000`` (0.999 down to 0).
- Per image, predictions in descending score order each take the ground-truth face of highest IoU
  (``x2 = x + w``; areas with the ``+ 1`` pixel convention of its ``boxoverlap``). At IoU >= 0.5: a
  prediction on an ignored face is discarded (neither hit nor false alarm); the first prediction on a
  counted face recalls it; later ones on the same face stay proposals (false alarms), even if they
  overlap another face that no prediction has recalled yet.
- At each threshold, summed over images: precision = recalled faces / proposals, recall = recalled
  faces / counted faces of the whole set. Images without ground truth or without predictions are
  left out of the matching (so predictions on a face-less image are no false alarms), but their
  counted faces stay in the recall's denominator.
- AP: VOC's all-point area under the PR curve, with the monotone precision envelope.

Settings: the official easy / medium / hard results count the faces listed in
``wider_{easy,medium,hard}_val.mat`` (chosen by EdgeBox detection rates, not derivable from the
annotation txt) and ignore every other face of the image. :func:`read_wider_mat` reads them.
Without those files, the ``all`` setting counts every face the data does not mark as an ignore region.

Two deliberate departures, both where the original divides by zero: when all scores are equal,
every prediction passes every threshold (the original's 0 / 0 scores pass none); a threshold with no
proposals has no precision (NaN; the envelope skips it as MATLAB's ``max`` does, and it never
weighs in the area, since recall is 0 there).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbtasks.errors import DataError

log = logging.getLogger(__name__)

NUM_THRESHOLDS = 1000
SETTINGS: tuple[str, ...] = ("easy", "medium", "hard")
# the official ground truth: all faces, then each setting's counted faces
GT_MAT = "wider_face_val.mat"
SETTING_MATS = {s: f"wider_{s}_val.mat" for s in SETTINGS}


@dataclass(frozen=True)
class WiderCurve:
    """One setting's result.

    Attributes:
        ap: VOC all-point AP of the curve; NaN when no face counts.
        precision / recall: ``(T,)`` per threshold (precision NaN where nothing passes).
        thresholds: ``(T,)`` normalised-score thresholds, descending.
        faces: counted faces of the set (the recall's denominator).
    """

    ap: float
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    faces: int


def thresholds(num: int = NUM_THRESHOLDS) -> np.ndarray:
    """``1 - (k + 1) / num`` for ``k < num``: 0.999 ... 0 for the official 1000."""
    return 1 - (np.arange(num) + 1) / num


def overlaps(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU ``(D, M)`` of ``boxes (D, 4)`` and ``gt (M, 4)``, both x1y1x2y2, with the evaluation's
    ``+ 1`` pixel convention (``w = x2 - x1 + 1``); no overlap where the intersection is empty."""
    boxes, gt = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(gt, np.float64).reshape(-1, 4)
    iw = np.minimum(boxes[:, None, 2], gt[None, :, 2]) - np.maximum(boxes[:, None, 0], gt[None, :, 0]) + 1
    ih = np.minimum(boxes[:, None, 3], gt[None, :, 3]) - np.maximum(boxes[:, None, 1], gt[None, :, 1]) + 1
    inter = iw * ih
    area_d = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    area_g = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_d[:, None] + area_g[None, :] - inter)
    return np.where((iw > 0) & (ih > 0), iou, 0.0)


def normalise_scores(scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Min-max normalise every image's scores by the minimum and maximum over **all** images."""
    flat = [np.asarray(s, np.float64).reshape(-1) for s in scores]
    nonempty = [s for s in flat if s.size]
    if not nonempty:
        return flat
    low, high = min(float(s.min()) for s in nonempty), max(float(s.max()) for s in nonempty)
    if high <= low:  # one score for all: every prediction passes every threshold
        return [np.ones_like(s) for s in flat]
    return [(s - low) / (high - low) for s in flat]


def match_image(
    boxes: np.ndarray, gt: np.ndarray, counted: np.ndarray, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """One image's matching, predictions already in descending score order.

    Args:
        boxes: ``(D, 4)`` x1y1x2y2 predictions, best score first.
        gt: ``(M, 4)`` x1y1x2y2 faces.
        counted: ``(M,)`` bool: the face counts (False: ignored).

    Returns:
        ``proposal (D,)`` bool (False: discarded, its best face is ignored) and ``recalled (D,)``:
        counted faces recalled by predictions ``0..d`` (the official ``pred_recall``).
    """
    d = len(boxes)
    if d == 0 or len(gt) == 0:
        return np.ones(d, bool), np.zeros(d, np.int64)
    iou = overlaps(boxes, gt)
    best = iou.argmax(axis=1)  # the first face of highest IoU, as max() gives in both originals
    hit = iou[np.arange(d), best] >= iou_threshold
    counted = np.asarray(counted, bool)
    proposal = ~(hit & ~counted[best])
    # a counted face is recalled by the first prediction whose best face it is
    on_counted = np.flatnonzero(hit & counted[best])
    first = np.zeros(d, np.int64)
    _, where = np.unique(best[on_counted], return_index=True)
    first[on_counted[where]] = 1
    return proposal, np.cumsum(first)


def image_pr(scores: np.ndarray, proposal: np.ndarray, recalled: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """``(T, 2)``: proposals and recalled faces among the predictions scoring >= each threshold.

    ``scores`` are normalised and descending; the official code takes the last prediction scoring
    >= t and counts proposals and recalls up to it.
    """
    n = np.searchsorted(-scores, -cuts, side="right")  # predictions with score >= t
    proposals = np.concatenate(([0], np.cumsum(proposal)))[n]
    hits = np.concatenate(([0], recalled))[n]
    return np.stack([proposals, hits], axis=1).astype(np.float64)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC's all-point AP: sentinels (0, 0) and (1, 0), the monotone precision envelope, the area
    where recall changes. NaN precision (no proposals) is skipped by the envelope (``fmax``)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def wider_ap(
    predictions: Sequence[tuple[np.ndarray, np.ndarray]],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    counted: Sequence[np.ndarray] | None = None,
    iou_threshold: float = 0.5,
    num_thresholds: int = NUM_THRESHOLDS,
    normalised: bool = False,
) -> WiderCurve:
    """WIDER-style AP of one setting over a set of images (see the module docstring).

    Args:
        predictions: per image ``(boxes (D, 4) x1y1x2y2, scores (D,))``, any order.
        ground_truth: per image ``(boxes (M, 4) x1y1x2y2, ignore (M,) bool)``.
        counted: per image ``(M,)`` bool, a setting's face list (easy / medium / hard); a face
            counts when it is in it and not ignored. ``None``: every face that is not ignored.
        iou_threshold: 0.5 in the protocol.
        num_thresholds: 1000 in the protocol.
        normalised: the scores are already normalised over the whole set (skip normalising).
    """
    if len(predictions) != len(ground_truth) or (counted is not None and len(counted) != len(ground_truth)):
        raise ValueError(
            f"{len(predictions)} prediction lists for {len(ground_truth)} images"
            + ("" if counted is None else f" and {len(counted)} face lists")
        )
    scores = [np.asarray(s, np.float64).reshape(-1) for _, s in predictions]
    if not normalised:
        scores = normalise_scores(scores)
    cuts = thresholds(num_thresholds)
    curve = np.zeros((num_thresholds, 2))
    faces = 0
    for k, ((boxes, _), s, (gt, ignore)) in enumerate(zip(predictions, scores, ground_truth, strict=True)):
        keep = ~np.asarray(ignore, bool).reshape(-1)
        if counted is not None:
            keep &= np.asarray(counted[k], bool).reshape(-1)
        faces += int(keep.sum())
        gt = np.asarray(gt, np.float64).reshape(-1, 4)
        if not len(gt) or not len(s):
            continue
        order = np.argsort(-s, kind="stable")  # MATLAB's sort(..., 'descend') is stable too
        proposal, recalled = match_image(np.asarray(boxes, np.float64).reshape(-1, 4)[order], gt, keep, iou_threshold)
        curve += image_pr(s[order], proposal, recalled, cuts)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = curve[:, 1] / curve[:, 0]
        recall = curve[:, 1] / faces if faces else np.full(num_thresholds, np.nan)
    ap = voc_ap(recall, precision) if faces else float("nan")
    return WiderCurve(ap, precision, recall, cuts, faces)


@dataclass(frozen=True)
class WiderGroundTruth:
    """The official val ground truth, keyed by ``(event folder, image name without extension)``.

    Attributes:
        boxes: per image ``(M, 4)`` x1y1x2y2 faces (``x2 = x + w``).
        counted: per setting, per image, ``(M,)`` bool: the face is in that setting's list.
    """

    boxes: dict[tuple[str, str], np.ndarray]
    counted: dict[str, dict[tuple[str, str], np.ndarray]]


def _text(cell) -> str:
    """A MATLAB string as loadmat gives it (an array holding one str)."""
    return str(np.asarray(cell).reshape(-1)[0])


def read_wider_mat(folder: str | Path) -> WiderGroundTruth:
    """Read eval_tools' ``ground_truth/`` folder: ``wider_face_val.mat`` and the three setting files.

    Raises:
        DataError: a file is missing or not the expected layout; scipy is not installed.
    """
    folder = Path(folder)
    missing = [n for n in (GT_MAT, *SETTING_MATS.values()) if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{folder}: WIDER FACE evaluation files {missing} not found (eval_tools' ground_truth/ "
            f"folder holds {GT_MAT} and {', '.join(SETTING_MATS.values())})"
        )
    try:
        from scipy.io import loadmat  # optional: only the official settings need it
    except ImportError as err:
        raise DataError(f"{folder}: reading WIDER FACE's .mat files needs scipy (pip install scipy)") from err
    try:
        gt = loadmat(folder / GT_MAT)
        events, files, boxes = gt["event_list"], gt["file_list"], gt["face_bbx_list"]
        keys, face_boxes = [], {}
        for i in range(len(events)):
            event = _text(events[i][0])
            for j, name in enumerate(files[i][0]):
                key = (event, _text(name[0]))
                xywh = np.asarray(boxes[i][0][j][0], np.float64).reshape(-1, 4)
                face_boxes[key] = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
                keys.append((i, j, key))
        counted = {}
        for setting, name in SETTING_MATS.items():
            lists = loadmat(folder / name)["gt_list"]
            masks = {}
            for i, j, key in keys:
                mask = np.zeros(len(face_boxes[key]), bool)
                mask[np.asarray(lists[i][0][j][0], np.int64).reshape(-1) - 1] = True  # 1-based indices
                masks[key] = mask
            counted[setting] = masks
    except (KeyError, IndexError, ValueError, TypeError, OSError) as err:
        raise DataError(f"{folder}: not WIDER FACE's evaluation .mat layout ({type(err).__name__}: {err})") from err
    return WiderGroundTruth(face_boxes, counted)


def split_rows(images: np.ndarray, dets: np.ndarray, gts: np.ndarray) -> tuple[list, list, list]:
    """:class:`~mbtasks.metrics.coco.CocoMeanAP` rows split per image: image ids, detection rows, ground-truth rows."""
    det_parts = np.split(dets, np.cumsum(images[:, 3].astype(np.int64))[:-1])
    gt_parts = np.split(gts, np.cumsum(images[:, 4].astype(np.int64))[:-1])
    return [int(i) for i in images[:, 0]], det_parts, gt_parts


def wider_stats(
    images: np.ndarray,
    dets: np.ndarray,
    gts: np.ndarray,
    label: int,
    official: WiderGroundTruth | None = None,
    names: Mapping[int, tuple[str, str]] | None = None,
) -> dict[str, float]:
    """WIDER-style APs of one class from :class:`~mbtasks.metrics.coco.CocoMeanAP`'s rows.

    Args:
        images / dets / gts: the rows (each image once): ``(image_id, h, w, D, M)``,
            ``(image_id, x1, y1, x2, y2, score, label)``, ``(image_id, x1, y1, x2, y2, label, iscrowd, area)``.
        label: the face class.
        official: the official ground truth; with ``names`` (image id -> its key there) it adds
            ``wider_ap_easy`` / ``_medium`` / ``_hard`` on the images of the rows that it lists.

    Returns:
        ``wider_ap_all``: every face the data does not mark as an ignore region counts (``iscrowd``: WIDER's
        invalid and tiny faces, dlib's ``ignore``); plus the three official settings when given.
    """
    ids, det_parts, gt_parts = split_rows(images, dets, gts)
    det_parts = [d[d[:, 6] == label] for d in det_parts]
    gt_parts = [g[g[:, 5] == label] for g in gt_parts]
    preds = [(d[:, 1:5], d[:, 5]) for d in det_parts]
    scores = normalise_scores([s for _, s in preds])  # once over the whole set, shared by every setting
    preds = [(b, s) for (b, _), s in zip(preds, scores, strict=True)]
    out = {"wider_ap_all": wider_ap(preds, [(g[:, 1:5], g[:, 6] > 0) for g in gt_parts], normalised=True).ap}
    if official is None or names is None:
        return out
    keys = [names.get(i) for i in ids]
    listed = [k for k, key in enumerate(keys) if key in official.boxes]
    if not listed:
        log.warning(
            "WIDER FACE easy/medium/hard: none of the %d evaluated images is in %s; not reported", len(ids), GT_MAT
        )
        return out
    if len(listed) < len(official.boxes):
        log.warning(
            "WIDER FACE easy/medium/hard on %d of the %d images of %s (the others were not evaluated; "
            "their faces are left out, so these are not the official numbers)",
            len(listed),
            len(official.boxes),
            GT_MAT,
        )
    sub_preds = [preds[k] for k in listed]
    sub_gt = [(official.boxes[keys[k]], np.zeros(len(official.boxes[keys[k]]), bool)) for k in listed]
    for setting in SETTINGS:
        counted = [official.counted[setting][keys[k]] for k in listed]
        out[f"wider_ap_{setting}"] = wider_ap(sub_preds, sub_gt, counted, normalised=True).ap
    return out
