"""SSD's "IoU crop" as an albumentations transform (Liu et al. 2016, arXiv:1512.02325, Sec. 2.2
"Data augmentation"), so it can sit in a YAML pipeline between the library's own transforms.

albumentations has no equivalent (its bbox-safe crops keep all or at least one box whole;
none samples by a minimum IoU with an object), so this small one is written by hand,
following torchvision's ``RandomIoUCrop``. It subclasses albumentations' ``BaseCrop``, so
the image / box cropping itself is the library's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.core.bbox_utils import denormalize_bboxes


def _iou_with(boxes: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """IoU of ``(M, 4)`` x1y1x2y2 boxes with one crop box."""
    ix1 = np.maximum(boxes[:, 0], crop[0])
    iy1 = np.maximum(boxes[:, 1], crop[1])
    ix2 = np.minimum(boxes[:, 2], crop[2])
    iy2 = np.minimum(boxes[:, 3], crop[3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    crop_area = (crop[2] - crop[0]) * (crop[3] - crop[1])
    return inter / np.maximum(area + crop_area - inter, 1e-9)


class RandomIoUCrop(BaseCrop):
    """Crop a random patch whose IoU with some object reaches a randomly chosen minimum.

    Each call picks a minimum IoU from ``min_ious`` (1.0 = keep the whole image), then
    tries up to ``trials`` patches of side ``[min_scale, max_scale]`` times the image and
    aspect ratio in ``[min_aspect, max_aspect]``; a patch is accepted when the centre of
    at least one box lies in it and the IoU of such a box reaches the minimum. Boxes whose
    centre falls outside the patch are dropped (the paper's rule); the rest are cut to it.
    Without boxes the patch is any random one. If no patch is accepted, the image is kept.

    Args:
        min_ious: the options for the minimum IoU (the paper's 0.1, 0.3, 0.5, 0.7, 0.9, and
            1.0 for "use the whole image").
        min_scale / max_scale: patch side relative to the image side.
        min_aspect / max_aspect: patch width / height bounds.
        trials: patches tried per call.
        p: probability of applying the transform.
    """

    class InitSchema(BaseCrop.InitSchema):
        min_ious: Sequence[float]
        min_scale: float
        max_scale: float
        min_aspect: float
        max_aspect: float
        trials: int

    def __init__(
        self,
        min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        min_aspect: float = 0.5,
        max_aspect: float = 2.0,
        trials: int = 40,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(f"RandomIoUCrop: need 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
        self.min_ious = tuple(float(v) for v in min_ious)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.min_aspect, self.max_aspect = float(min_aspect), float(max_aspect)
        self.trials = int(trials)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        bboxes = np.asarray(data.get("bboxes", np.zeros((0, 4))), dtype=np.float64)
        boxes = denormalize_bboxes(bboxes, (height, width))[:, :4] if len(bboxes) else np.zeros((0, 4))
        whole = (0, 0, width, height)
        min_iou = self.py_random.choice(self.min_ious)
        if min_iou >= 1.0:
            return {"crop_coords": whole}
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(self.trials):
            w = width * self.py_random.uniform(self.min_scale, self.max_scale)
            h = height * self.py_random.uniform(self.min_scale, self.max_scale)
            if not self.min_aspect <= w / h <= self.max_aspect:
                continue
            x1 = self.py_random.uniform(0, width - w)
            y1 = self.py_random.uniform(0, height - h)
            crop = np.array([x1, y1, x1 + w, y1 + h])
            coords = (int(x1), int(y1), max(int(x1) + 1, int(x1 + w)), max(int(y1) + 1, int(y1 + h)))
            if not len(boxes):
                return {"crop_coords": coords}
            inside = (
                (centers[:, 0] > crop[0])
                & (centers[:, 0] < crop[2])
                & (centers[:, 1] > crop[1])
                & (centers[:, 1] < crop[3])
            )
            if inside.any() and _iou_with(boxes[inside], crop).max() >= min_iou:
                return {"crop_coords": coords}
        return {"crop_coords": whole}

    def apply_to_bboxes(self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        """Drop boxes whose centre is outside the patch, then cut the rest to it.

        ``bboxes`` are albumentations-normalised ``(M, 4 + extra)`` rows (labels ride along).
        """
        if len(bboxes):
            height, width = params["shape"][:2]
            cx = (bboxes[:, 0] + bboxes[:, 2]) / 2 * width
            cy = (bboxes[:, 1] + bboxes[:, 3]) / 2 * height
            x1, y1, x2, y2 = crop_coords
            bboxes = bboxes[(cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)]
        return super().apply_to_bboxes(bboxes, crop_coords, **params)
