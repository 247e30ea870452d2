"""COCO json detection data: ``{"images", "annotations", "categories"}`` files, as written by
COCO, CVAT, Label Studio, Roboflow... and by the synthetic generator.

Category ids may have gaps (COCO's run 1..90 for 80 classes): classes are the training
file's categories sorted by id, mapped to contiguous labels ``0..K-1`` and back through
``info["category_ids"]``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mbtasks.data.detection import (
    AnnotationReport,
    DetectionDataModule,
    ImageRecord,
    as_number,
    check_box,
    declared_size,
    require_boxes,
    split_off,
)
from mbtasks.data.image_files import inside_folder
from mbtasks.errors import DataError

log = logging.getLogger(__name__)


def read_coco_json(path: Path) -> dict:
    """Load a COCO annotation file and check its top-level shape.

    Raises:
        DataError: missing file, invalid json, or missing ``images`` / ``annotations`` / ``categories``.
    """
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid json ({err})") from err
    except RecursionError as err:
        raise DataError(f"{path}: json nested too deeply to be a COCO file") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a json object with images, annotations, categories")
    missing = [k for k in ("images", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DataError(f"{path}: missing or malformed {missing} (a COCO file has images, annotations, categories)")
    data.setdefault("annotations", [])
    return data


def as_id(value) -> int | None:
    """A COCO id: a json integer (or a string of digits, as some exporters write it).

    Floats and booleans are not ids (``int(1.5)`` and ``int(True)`` would silently make one).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def coco_categories(data: dict, path: Path) -> tuple[list[str], list[int]]:
    """Class names and ids from ``categories``, sorted by id.

    Raises:
        DataError: a category without an integer ``id`` or a ``name``, duplicate ids or names.
    """
    cats = []
    for c in data["categories"]:
        cid = as_id(c.get("id")) if isinstance(c, dict) else None
        if cid is None or not isinstance(c.get("name"), str) or not c["name"]:
            raise DataError(f"{path}: category {str(c)[:80]}: every category needs an integer 'id' and a 'name'")
        cats.append((cid, c["name"]))
    cats.sort()
    if not cats:
        raise DataError(f"{path}: 'categories' is empty")
    ids = [i for i, _ in cats]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: duplicate category ids in {ids}")
    first: dict[str, int] = {}
    for cid, name in cats:
        if name in first:
            raise DataError(
                f"{path}: categories {first[name]} and {cid} share the name {name!r}; class names "
                "must be unique (merge the ids or rename one)"
            )
        first[name] = cid
    return [n for _, n in cats], ids


def load_coco(
    ann_file: Path, image_dir: Path, category_ids: list[int], report: AnnotationReport | None = None
) -> tuple[list[ImageRecord], AnnotationReport]:
    """Read one split into records, skipping (and counting) what cannot be used.

    Skipped, each with a message naming file and annotation id: boxes of zero or negative
    size, boxes outside the image, unknown category ids, annotations of images that are
    not listed or whose file is missing, ``file_name`` entries that are absolute or contain
    ``..`` (they would read outside ``image_dir``), malformed entries (an id or
    ``category_id`` that is a float or boolean, a ``bbox`` that is not 4 numbers). A
    ``width`` / ``height`` that is not a number is replaced by the file's own size (counted).
    Images without annotations are kept (negatives).

    Raises:
        DataError: two image entries share an id (their boxes would mix), or no image is usable.

    Args:
        ann_file: the COCO json.
        image_dir: folder the ``file_name`` entries are relative to.
        category_ids: the training categories' ids; position = contiguous label.
    """
    data = read_coco_json(ann_file)
    report = report if report is not None else AnnotationReport(ann_file)
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    images: dict[int, ImageRecord] = {}
    listed: dict[int, str] = {}
    for entry in data["images"]:
        image_id = as_id(entry.get("id")) if isinstance(entry, dict) else None
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if image_id is None or not isinstance(name, str):
            report.add("malformed image entries", f"image entry {str(entry)[:80]} lacks an integer 'id' or 'file_name'")
            continue
        if image_id in listed:
            raise DataError(
                f"{ann_file}: image id {image_id} is used twice (file_name {listed[image_id]!r} and "
                f"{name!r}); their boxes would mix: give every image its own id"
            )
        listed[image_id] = name
        if not inside_folder(name):
            report.add(
                "file names outside the image folder",
                f"image id {image_id}: file_name {name!r} is absolute or climbs out of {image_dir} with '..'; "
                "it is not read",
            )
            continue
        path = image_dir / name
        if not path.is_file():
            report.add(
                "missing image files", f"image id {image_id}: file {path} not found; its annotations are skipped"
            )
            continue
        where = f"image id {image_id}"
        size = declared_size(entry.get("width"), entry.get("height"), path, report, f"{where} ({name}):", f"{where}: ")
        if size is None:
            continue
        width, height = size
        images[image_id] = ImageRecord(image_id, path, width, height)
    per_image: dict[int, list[tuple]] = {i: [] for i in images}
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            report.add("malformed annotations", f"annotation {str(ann)[:80]}: expected a json object")
            continue
        ann_id = ann.get("id", "?")
        image_id, category, bbox = as_id(ann.get("image_id")), as_id(ann.get("category_id")), ann.get("bbox")
        if (
            image_id is None
            or category is None
            or not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        ):
            report.add(
                "malformed annotations",
                f"annotation {ann_id}: needs an integer image_id and category_id "
                f"and bbox [x, y, w, h] of numbers; got image_id="
                f"{ann.get('image_id')!r}, category_id={ann.get('category_id')!r}, "
                f"bbox={str(bbox)[:60]}",
            )
            continue
        x, y, w, h = (float(v) for v in bbox)
        if image_id not in images:
            if image_id not in listed:
                report.add(
                    "annotations of unlisted images", f"annotation {ann_id}: image id {image_id} is not in 'images'"
                )
            else:
                report.add(
                    "annotations of missing images", f"annotation {ann_id}: image id {image_id} has no readable file"
                )
            continue
        rec = images[image_id]
        if category not in label_of:
            report.add(
                "unknown category ids",
                f"annotation {ann_id} ({rec.path.name}): category id {category} is not "
                f"among the training categories {category_ids}",
            )
            continue
        box, reason = check_box((x, y, x + w, y + h), rec.width, rec.height)
        if box is None:
            report.add(
                f"boxes: {reason}",
                f"annotation {ann_id} ({rec.path.name}, {rec.width}x{rec.height}): "
                f"bbox [x, y, w, h] = {[x, y, w, h]}: {reason}",
            )
            continue
        area = as_number(ann.get("area")) or (box[2] - box[0]) * (box[3] - box[1])
        per_image[image_id].append((box, label_of[category], bool(ann.get("iscrowd", 0)), area))
    records = []
    for image_id, rec in images.items():
        anns = per_image[image_id]
        if anns:
            rec.boxes = np.array([a[0] for a in anns], np.float32).reshape(-1, 4)
            rec.labels = np.array([a[1] for a in anns], np.int64)
            rec.iscrowd = np.array([a[2] for a in anns], bool)
            rec.areas = np.array([a[3] for a in anns], np.float32)
        records.append(rec)
    if not records:
        raise DataError(f"{ann_file}: none of its {len(data['images'])} images could be used ({report.summary()})")
    report.log()
    return records, report


class CocoDataModule(DetectionDataModule):
    """COCO-format detection splits.

    Args:
        root: data set folder; the paths below are relative to it (or absolute).
        train_ann / train_images: training annotation json and image folder.
        val_ann / val_images: validation split; ``null`` holds out ``val_fraction`` of train.
        test_ann / test_images: test split; ``null`` uses the validation split.
        Other arguments: see :class:`DetectionDataModule`.
    """

    def __init__(
        self,
        root: str,
        train_ann: str = "annotations/instances_train2017.json",
        train_images: str = "train2017",
        val_ann: str | None = "annotations/instances_val2017.json",
        val_images: str | None = "val2017",
        test_ann: str | None = None,
        test_images: str | None = None,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        self.split_files = {
            "train": (train_ann, train_images),
            "val": (val_ann, val_images),
            "test": (test_ann, test_images),
        }

    def _paths(self, split: str) -> tuple[Path, Path] | None:
        ann, images = self.split_files[split]
        if not ann:
            return None
        if not images:
            raise DataError(f"data.{split}_images is not set but data.{split}_ann={ann} is")
        return self.root / ann, self.root / images

    def load_splits(self) -> dict[str, list]:
        train_paths = self._paths("train")
        if train_paths is None:
            raise DataError("data.train_ann is not set: give the training annotation file (relative to data.root)")
        train_ann, train_dir = train_paths
        self.class_names, self.category_ids = coco_categories(read_coco_json(train_ann), train_ann)
        train, report = load_coco(train_ann, train_dir, self.category_ids, self.report_for(train_ann))
        require_boxes(train, train_ann, report)
        val_paths = self._paths("val")
        if val_paths is None:
            train, val = split_off(train, self.val_fraction)
        else:
            val, _ = load_coco(*val_paths, self.category_ids, self.report_for(val_paths[0]))
        test_paths = self._paths("test")
        test = (
            val if test_paths is None else load_coco(*test_paths, self.category_ids, self.report_for(test_paths[0]))[0]
        )
        return {"train": train, "val": val, "test": test}
