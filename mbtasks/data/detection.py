"""What every detection data format shares: the per-image record, annotation checks with
counted skips, the dataset (albumentations bbox-aware pipelines) and the data module.

Format readers (``coco.py``, ``voc.py``) turn their files into :class:`ImageRecord` lists;
everything after that is format-free.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mbtasks.data.base import SplitDataModule
from mbtasks.data.image_files import ImageReadError, SkipCounter, open_image, read_rgb_sized
from mbtasks.data.transforms import IMAGENET_MEAN, IMAGENET_STD, apply, to_tensor
from mbtasks.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass
class ImageRecord:
    """One image and its boxes, in original pixels.

    Attributes:
        image_id: the annotation file's id for the image (COCO ``id``; VOC: running index).
        path: image file.
        width / height: image size as the annotation file gives it (read from the image, after EXIF
            orientation, when it gives none). When it is the stored size of an image that EXIF
            turns by 90 degrees, the boxes are turned with the image at loading.
        boxes: ``(M, 4)`` float32, ``x1y1x2y2`` original pixels.
        labels: ``(M,)`` int64 contiguous class indices in ``[0, K)``.
        iscrowd: ``(M,)`` bool; COCO ``iscrowd`` or VOC ``difficult``: left out of training,
            "ignore" regions for pycocotools.
        areas: ``(M,)`` float32, COCO ``area`` (segment area) when given, else the box area.
        attributes: per-box flags a format carries beyond class and ignore, each ``(M,)`` (WIDER FACE's
            ``blur``, ``occlusion``...; dlib's ``occluded``); not used in training, written by the COCO export.
    """

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    areas: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_trainable(self) -> int:
        return int((~self.iscrowd).sum())

    def set_boxes(self, boxes, labels, ignore, attributes: dict | None = None) -> ImageRecord:
        """Fill boxes (``(M, 4)`` x1y1x2y2 pixels), labels, ignore flags and box areas; returns ``self``."""
        self.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(labels, np.int64).reshape(-1)
        self.iscrowd = np.asarray(ignore, bool).reshape(-1)
        self.areas = ((self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])).astype(np.float32)
        self.attributes = {k: np.asarray(v) for k, v in (attributes or {}).items()}
        return self


def image_size_of(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file after EXIF orientation, reading only its header.

    Raises:
        ImageReadError: the file cannot be opened as an image.
    """
    with open_image(path) as img:
        w, h = img.size
        if img.getexif().get(0x0112) in _SWAPPING_ORIENTATIONS:
            w, h = h, w
        return int(w), int(h)


def declared_size(
    width: object, height: object, path: Path, report: AnnotationReport, where: str, unreadable: str = ""
) -> tuple[int, int] | None:
    """The image size an annotation declares, else the file's own (header only): a size that is not a
    number is counted under ``where`` and replaced; None (counted, with ``unreadable`` before the
    reason) when the file cannot be read either."""
    w, h = as_size(width), as_size(height)
    if w is None or h is None:
        report.add(
            "image sizes that are not numbers", f"{where} width={width!r}, height={height!r}; the file's size is used"
        )
    if w and h and w > 0 and h > 0:
        return w, h
    try:
        return image_size_of(path)
    except ImageReadError as err:
        report.add("unreadable images", f"{unreadable}{err}")
        return None


def exif_orientation(path: Path) -> int:
    """The EXIF orientation of an image file (1: none; 2-8 as ``read_rgb`` applies them), header only."""
    try:
        with open_image(path) as img:
            value = img.getexif().get(0x0112, 1)
    except ImageReadError:
        return 1
    return int(value) if value in range(1, 9) else 1


def turning_orientation(rec: ImageRecord, decoded: tuple[int, int]) -> int:
    """The EXIF orientation (5-8) that explains a decoded ``(width, height)`` which is the record's
    annotated size turned by 90 degrees (boxes turn with the image); 0 when it does not."""
    if decoded != (rec.height, rec.width):
        return 0
    orientation = exif_orientation(rec.path)
    return orientation if orientation in _SWAPPING_ORIENTATIONS else 0


def orient_boxes(boxes: np.ndarray, orientation: int, width: int, height: int) -> np.ndarray:
    """Move ``(M, 4)`` x1y1x2y2 boxes in stored pixels (``width`` x ``height``, before EXIF
    orientation) the way PIL's ``ImageOps.exif_transpose`` moves the image."""
    x1, y1, x2, y2 = np.asarray(boxes, np.float32).reshape(-1, 4).T
    w, h = float(width), float(height)
    moved = {
        1: (x1, y1, x2, y2),
        2: (w - x2, y1, w - x1, y2),  # mirror
        3: (w - x2, h - y2, w - x1, h - y1),  # rotate 180
        4: (x1, h - y2, x2, h - y1),  # flip
        5: (y1, x1, y2, x2),  # transpose
        6: (h - y2, x1, h - y1, x2),  # rotate 90 clockwise
        7: (h - y2, w - x2, h - y1, w - x1),  # transverse
        8: (y1, w - x2, y2, w - x1),  # rotate 90 counter-clockwise
    }[orientation]
    return np.stack(moved, axis=1).astype(np.float32)


class AnnotationReport:
    """Counts what a reader skipped (``add``) or kept after fixing it (``keep``: clipped boxes, images
    without labels kept as negatives...), logging the first few cases with file and id.

    Args:
        source: the annotation file or folder, named in every message.
        show: how many individual messages to log before only counting.
    """

    def __init__(self, source: str | Path, show: int = 10) -> None:
        self.source = str(source)
        self.show = show
        self.counts: Counter[str] = Counter()
        self.kept: Counter[str] = Counter()
        self.messages: list[str] = []

    def add(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        if len(self.messages) < self.show:
            self.messages.append(message)
            log.warning("%s: %s", self.source, message)

    def keep(self, reason: str, message: str) -> None:
        """Count something the reader fixed or kept as it is (not dropped); the first few are logged."""
        self.kept[reason] += 1
        if self.kept[reason] <= 3:
            log.info("%s: %s", self.source, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        kept = ", ".join(f"{n} {reason}" for reason, n in sorted(self.kept.items()))
        if kept:
            parts = f"{parts}; kept: {kept}" if parts else f"kept: {kept}"
        return f"{self.source}: {parts}" if parts else f"{self.source}: no problems"

    def log(self) -> None:
        if self.counts:
            log.warning("%s (first: %s)", self.summary(), self.messages[0] if self.messages else "")
        elif self.kept:
            log.info("%s", self.summary())


def check_box(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[tuple[float, ...] | None, str | None]:
    """Validate one ``x1y1x2y2`` box against its image.

    Returns:
        ``(box, None)`` when usable (clipped to the image if it sticks out), or
        ``(None, reason)`` with reason ``"zero or negative size"`` or ``"outside the image"``.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return None, "zero or negative size"
    cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)
    if cx2 - cx1 < 1.0 or cy2 - cy1 < 1.0:
        return None, "outside the image"
    return (cx1, cy1, cx2, cy2), None


def as_number(value) -> float | None:
    """A finite json number (or numeric string); None for anything else, booleans included."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def as_size(value) -> int | None:
    """An annotated image ``width`` / ``height``: 0 when absent or 0 (read from the file), None when not a
    number >= 0 (``"abc"``, ``nan``, ``-5``, ``true``)."""
    if value is None or value == "":
        return 0
    number = as_number(value)
    return int(round(number)) if number is not None and number >= 0 else None


def require_boxes(records: list[ImageRecord], source: str | Path, report: AnnotationReport | None = None) -> None:
    """Stop with a :class:`DataError` when a training split has no usable box at all."""
    if not any(r.num_trainable for r in records):
        detail = f" ({report.summary()})" if report is not None and (report.counts or report.kept) else ""
        raise DataError(
            f"{source}: no usable boxes in {len(records)} images{detail}; training would only learn background"
        )


def split_off(
    records: list[ImageRecord], fraction: float, seed: int = 0
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Deterministically hold out ``fraction`` of ``records`` (at least one) as a validation split."""
    if not 0 < fraction < 1:
        raise ConfigError(f"data.val_fraction={fraction}: expected a number in (0, 1) when there is no val split")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(records) * fraction)))
    held = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def detection_collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack images ``(N, 3, S, S)``; keep targets as a list (box counts differ)."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


class DetectionDataset(Dataset):
    """Images and targets for training or evaluation.

    Args:
        records: the split's images.
        pipeline: albumentations ``Compose``; for training it must have ``bbox_params``
            (``pascal_voc`` format, label field ``labels``); for evaluation it must only
            resize (predictions are mapped back by the size ratio).
        image_size: side every output image must have.
        mean / std: normalisation after the pipeline.
        train: training samples (augmented boxes, crowd/difficult boxes dropped) or
            evaluation samples (original ground truth attached for COCO eval).
        decode_side: the smallest side ``pipeline`` needs; a JPEG may decode smaller than its full
            size (boxes follow by the decoded / full size ratio). 0: full size.

    Item:
        ``(image (3, S, S), target)`` with target ``boxes (M, 4)`` x1y1x2y2 in input pixels,
        ``labels (M,)`` in [0, K), ``image_id``, ``orig_size (h, w)``; evaluation targets add the
        original-pixel ground truth ``gt_boxes``, ``gt_labels``, ``gt_iscrowd``, ``gt_area``.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        pipeline: Callable | None,
        image_size: int,
        mean,
        std,
        train: bool,
        decode_side: int = 0,
    ) -> None:
        self.records = records
        self.decode_side = int(decode_side)
        self.pipeline = pipeline
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.train = train
        self.skips = SkipCounter()
        # Images whose decoded size differs from the annotation file's (boxes are rescaled).
        self.rescaled = SkipCounter("rescaling the boxes of")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict]:
        for offset in range(len(self.records)):
            rec = self.records[(idx + offset) % len(self.records)]
            try:
                image, size = read_rgb_sized(rec.path, self.decode_side)
            except ImageReadError as err:
                self.skips.skip(rec.path, str(err.__cause__ or err))
                continue
            return self._sample(rec, image, size)
        raise DataError("no readable image in the data set")

    def _sample(
        self,
        rec: ImageRecord,
        image: np.ndarray,
        size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, dict]:
        # Full-resolution size: boxes, ground truth and orig_size stay in full-size pixels.
        w, h = size or (image.shape[1], image.shape[0])
        boxes = rec.boxes
        if (w, h) != (rec.width, rec.height) and rec.width and rec.height:
            orientation = turning_orientation(rec, (w, h))
            if orientation:
                # Annotated on the stored pixels, decoded turned by EXIF: turn the boxes with the image.
                boxes = orient_boxes(boxes, orientation, rec.width, rec.height)
            else:
                # The annotation file's size disagrees with the decoded image: keep boxes relative.
                self.rescaled.skip(rec.path, f"annotated {rec.width}x{rec.height}, decoded {w}x{h}")
                boxes = boxes * np.array([w / rec.width, h / rec.height] * 2, np.float32)
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        keep = ~rec.iscrowd
        if self.train:
            # A reduced-size decode: the pipeline gets the boxes in the decoded image's pixels.
            to_decoded = np.array([image.shape[1] / w, image.shape[0] / h] * 2, np.float32)
            out = apply(self.pipeline, image, bboxes=boxes[keep] * to_decoded, labels=rec.labels[keep])
            net_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            net_labels = np.asarray(out["labels"], np.int64).reshape(-1)
        else:
            out = apply(self.pipeline, image)
            oh, ow = out["image"].shape[:2]
            net_boxes = boxes[keep] * np.array([ow / w, oh / h] * 2, np.float32)
            net_labels = rec.labels[keep]
        img = out["image"]
        if img.shape[:2] != (self.image_size, self.image_size):
            key = "data.train_transforms" if self.train else "data.eval_transforms"
            raise ConfigError(
                f"{key} returned a {img.shape[1]}x{img.shape[0]} image for {rec.path}, but data.image_size="
                f"{self.image_size}: end the pipeline with a resize to data.image_size"
            )
        target = {
            "boxes": torch.from_numpy(net_boxes),
            "labels": torch.from_numpy(net_labels),
            "image_id": int(rec.image_id),
            "orig_size": (h, w),
        }
        if not self.train:
            target.update(
                gt_boxes=torch.from_numpy(boxes),
                gt_labels=torch.from_numpy(rec.labels),
                gt_iscrowd=torch.from_numpy(rec.iscrowd.astype(np.int64)),
                gt_area=torch.from_numpy(rec.areas.astype(np.float32)),
            )
        return to_tensor(img, self.mean, self.std), target


class DetectionDataModule(SplitDataModule):
    """Train / val / test detection splits; subclasses read one annotation format.

    Subclasses implement :meth:`load_splits` returning the three record lists and set
    ``class_names`` and ``category_ids`` (the annotation file's id of each class, so
    predictions can be written with the original ids).

    Args:
        image_size: network input side (images are resized to a square).
        batch_size / num_workers: loader settings.
        train_transforms: albumentations ``Compose`` with ``bbox_params`` (from YAML).
        eval_transforms: albumentations ``Compose`` that resizes to ``image_size``.
        mean / std: normalisation (stored in checkpoints).
        val_fraction: share of the training images held out when there is no val split.
        generator: optional ``generator(root)`` that writes the data set first.
    """

    collate_fn = staticmethod(detection_collate)

    def __init__(
        self,
        root: str | Path,
        image_size: int = 300,
        batch_size: int = 32,
        num_workers: int = 2,
        train_transforms: Callable | None = None,
        eval_transforms: Callable | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        val_fraction: float = 0.1,
        generator: Callable | None = None,
    ) -> None:
        super().__init__(
            root, image_size, batch_size, num_workers, train_transforms, eval_transforms, mean, std, generator
        )
        self.val_fraction = val_fraction
        self.class_names: list[str] | None = None
        self.category_ids: list[int] | None = None
        # what the readers skipped or fixed, one report per annotation source (mode=check shows them)
        self.reports: list[AnnotationReport] = []
        if train_transforms is not None and "bboxes" not in getattr(train_transforms, "processors", {}):
            raise ConfigError(
                "data.train_transforms must be an albumentations.Compose with bbox_params "
                "(format: pascal_voc, label_fields: [labels]) so boxes follow the image"
            )

    def load_splits(self) -> dict[str, list[ImageRecord]]:  # pragma: no cover - abstract
        """``{"train": [...], "val": [...], "test": [...]}``; sets class names and ids."""
        raise NotImplementedError

    def report_for(self, source: str | Path) -> AnnotationReport:
        """A new :class:`AnnotationReport` for ``source``, kept in :attr:`reports`."""
        report = AnnotationReport(source)
        self.reports.append(report)
        return report

    def describe(self) -> dict:
        """What ``setup`` found, for ``mode=check``: classes, each split's image records, and what the
        readers dropped (``dropped``) or fixed and kept (``kept``) per annotation source."""
        return {
            "root": str(self.root),
            "class_names": list(self.class_names or []),
            "splits": {split: list(ds.records) for split, ds in self.datasets.items()},
            "dropped": {r.source: dict(r.counts) for r in self.reports if r.counts},
            "kept": {r.source: dict(r.kept) for r in self.reports if r.kept},
        }

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepare_data()
        splits = self.load_splits()
        if splits["test"] is splits["val"] or [r.path for r in splits["test"]] == [r.path for r in splits["val"]]:
            self.test_split = "val"
        for name, records in splits.items():
            train = name == "train"
            pipeline = self.train_transforms if train else self.eval_transforms
            self.datasets[name] = DetectionDataset(
                records, pipeline, self.image_size, self.mean, self.std, train, self.min_side_for(pipeline)
            )
        log.info(
            "detection data: %s images, %d classes",
            ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
            len(self.class_names or []),
        )

    def rescaled(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ds in self.datasets.values():
            out.update(ds.rescaled.skipped)
        return out

    @property
    def info(self) -> dict:
        """What a checkpoint must remember to predict without the data: classes, their
        original category ids, input size, normalisation."""
        if self.class_names is None:
            self.setup()
        return {
            "class_names": list(self.class_names),
            "category_ids": [int(i) for i in self.category_ids],
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }
