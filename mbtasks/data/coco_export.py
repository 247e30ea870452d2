"""Write any detection data module's splits as COCO json, so data moves to other tools.

    from mbtasks.data.voc import VocDataModule
    from mbtasks.data.coco_export import write_coco

    voc = VocDataModule("../shared/datasets/fruits_voc", val_split=None)
    done = write_coco(voc, "train", "fruits_train.json")   # done.image_root: what file_name is relative to

What is written: ``images`` (``id``, ``file_name`` relative to ``image_root``, ``width``, ``height``),
``categories`` (the data's own category ids: COCO's, VOC / dlib / WIDER 1..K, YOLO's class ids),
``annotations`` (``bbox`` [x, y, w, h] in the record's pixels, ``area``, ``category_id``, ``iscrowd``,
``ignore``, a box polygon as ``segmentation``; per-box ``attributes`` when the format has them, as
CVAT writes them). Ignore regions (VOC ``difficult``, COCO ``iscrowd``, dlib ``ignore``, WIDER's invalid
and tiny faces) get ``iscrowd: 1`` and ``ignore: 1``: pycocotools then neither rewards nor punishes
detections on them, and our COCO reader reads them back as ignore regions.

The result reads back with ``data=coco data.train_ann=<json> data.train_images=<image_root>``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from mbtasks.atomic_files import write_text_atomic
from mbtasks.data.detection import DetectionDataModule, ImageRecord
from mbtasks.errors import DataError

log = logging.getLogger(__name__)


class CocoExport(NamedTuple):
    """What :func:`write_coco` wrote: the json, the folder its ``file_name`` entries are relative to,
    and the numbers of images and annotations."""

    path: Path
    image_root: Path
    images: int
    annotations: int


def common_folder(paths: Sequence[Path]) -> Path:
    """The deepest folder that holds every path (``file_name`` entries are written relative to it)."""
    if not paths:
        raise DataError("no images to write")
    return Path(os.path.commonpath([str(Path(p).absolute().parent) for p in paths]))


def records_to_coco(
    records: Sequence[ImageRecord], class_names: Sequence[str], category_ids: Sequence[int], image_root: Path
) -> dict:
    """A COCO dataset dict of ``records`` (boxes in each record's pixels, ``x1y1x2y2`` -> ``xywh``).

    Raises:
        DataError: an image outside ``image_root``, or class names and ids of different lengths.
    """
    if len(class_names) != len(category_ids):
        raise DataError(f"{len(class_names)} class names but {len(category_ids)} category ids")
    image_root = Path(image_root).absolute()
    ids = [r.image_id for r in records]
    renumber = len(set(ids)) != len(ids)  # held-out or merged splits may repeat ids: number them afresh
    images, annotations = [], []
    for index, rec in enumerate(records):
        try:
            name = Path(rec.path).absolute().relative_to(image_root).as_posix()
        except ValueError as err:
            raise DataError(f"{rec.path} is not inside image_root={image_root}") from err
        image_id = index if renumber else int(rec.image_id)
        images.append({"id": image_id, "file_name": name, "width": int(rec.width), "height": int(rec.height)})
        for k, ((x1, y1, x2, y2), label, crowd) in enumerate(
            zip(rec.boxes.tolist(), rec.labels.tolist(), rec.iscrowd.tolist(), strict=True)
        ):
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(category_ids[label]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(rec.areas[k]) if len(rec.areas) else (x2 - x1) * (y2 - y1),
                "iscrowd": int(crowd),
                "ignore": int(crowd),
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
            }
            if rec.attributes:
                ann["attributes"] = {key: value[k].item() for key, value in rec.attributes.items()}
            annotations.append(ann)
    categories = [
        {"id": int(cid), "name": str(name), "supercategory": "none"}
        for cid, name in zip(category_ids, class_names, strict=True)
    ]
    return {
        "info": {"description": "written by mbtasks.data.coco_export", "image_root": str(image_root)},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(
    datamodule: DetectionDataModule, split: str, out: str | Path, image_root: str | Path | None = None
) -> CocoExport:
    """Write one split of a detection data module (any format: COCO, VOC, YOLO, dlib xml, WIDER FACE)
    as a COCO json file.

    Args:
        datamodule: the data module, as configured (``setup`` is called here).
        split: ``train``, ``val`` or ``test`` (a held-out val split is written as held out).
        out: the json file to write (folders are made).
        image_root: the folder ``file_name`` entries are relative to; default: the deepest folder that
            holds all the split's images.

    Returns:
        :class:`CocoExport` (path, image root, counts).

    Raises:
        DataError: an unknown split, or an image outside ``image_root``.
    """
    datamodule.setup("fit")
    if split not in datamodule.datasets:
        raise DataError(f"split {split!r}: expected one of {sorted(datamodule.datasets)}")
    records = datamodule.datasets[split].records
    root = Path(image_root) if image_root is not None else common_folder([r.path for r in records])
    data = records_to_coco(records, datamodule.class_names, datamodule.category_ids, root)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(data))
    log.info(
        "wrote %s: %d images, %d annotations (file names relative to %s)",
        out,
        len(data["images"]),
        len(data["annotations"]),
        root,
    )
    return CocoExport(out, root.absolute(), len(data["images"]), len(data["annotations"]))
