"""Pascal VOC xml detection data, in either layout:

- pairs: ``<root>/<split>/<name>.jpg`` next to ``<name>.xml`` (LabelImg and many exports);
- devkit: ``<root>/Annotations/*.xml``, ``<root>/JPEGImages/*``, ``<root>/ImageSets/Main/<split>.txt``.

Class names come from the xml (sorted) unless ``class_names`` fixes them; ``difficult``
objects are kept as "ignore" regions (not trained on, not counted as misses); an xml
size of 0 (common in exports) is replaced by the image's own size.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mbtasks.data.detection import (
    AnnotationReport,
    DetectionDataModule,
    ImageRecord,
    check_box,
    declared_size,
    require_boxes,
    split_off,
)
from mbtasks.data.image_files import IMAGE_EXTENSIONS, inside_folder
from mbtasks.errors import DataError

log = logging.getLogger(__name__)


def _text(node: ET.Element | None, tag: str, default: str = "") -> str:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text else default


def split_files(root: Path, split: str) -> list[tuple[Path, Path]]:
    """``(xml, image folder)`` pairs of one split, in sorted order.

    Raises:
        DataError: neither ``<root>/<split>/`` nor ``<root>/ImageSets/Main/<split>.txt`` exists.
    """
    folder = root / split
    if folder.is_dir():
        xmls = sorted(folder.glob("*.xml"))
        if not xmls:
            raise DataError(f"{folder}: no .xml annotation files (expected <name>.jpg next to <name>.xml)")
        return [(x, folder) for x in xmls]
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if listing.is_file():
        names = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        return [(root / "Annotations" / f"{n}.xml", root / "JPEGImages") for n in names]
    raise DataError(f"VOC split {split!r}: neither {folder}/ (image + xml pairs) nor {listing} (devkit layout) exists")


def _find_image(xml_path: Path, image_dir: Path, filename: str) -> Path | None:
    if filename and inside_folder(filename) and (image_dir / filename).is_file():
        return image_dir / filename
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        candidate = image_dir / f"{xml_path.stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def scan_class_names(files: list[tuple[Path, Path]]) -> list[str]:
    """Sorted object names found in the xml files (unparsable files are left to :func:`load_voc`)."""
    names: set[str] = set()
    for xml_path, _ in files:
        try:
            root = ET.parse(xml_path).getroot()
        except (ET.ParseError, OSError):
            continue
        names.update(_text(obj, "name") for obj in root.iter("object") if _text(obj, "name"))
    return sorted(names)


def load_voc(
    files: list[tuple[Path, Path]],
    class_names: Sequence[str],
    source: str | Path,
    report: AnnotationReport | None = None,
) -> tuple[list[ImageRecord], AnnotationReport]:
    """Read one split, skipping (and counting) what cannot be used.

    Boxes are converted from VOC's 1-based inclusive pixels to ``x1y1x2y2`` with
    ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``.
    """
    report = report if report is not None else AnnotationReport(source)
    label_of = {n: i for i, n in enumerate(class_names)}
    records = []
    for image_id, (xml_path, image_dir) in enumerate(files):
        try:
            root = ET.parse(xml_path).getroot()
        except (ET.ParseError, OSError) as err:
            report.add("unreadable xml files", f"{xml_path}: {err}")
            continue
        filename = _text(root, "filename")
        if filename and not inside_folder(filename):
            report.add(
                "file names outside the image folder",
                f"{xml_path}: <filename> {filename!r} is absolute or "
                f"climbs out of {image_dir} with '..'; it is not read",
            )
        path = _find_image(xml_path, image_dir, filename)
        if path is None:
            report.add(
                "missing image files",
                f"{xml_path}: image {_text(root, 'filename') or xml_path.stem} not found "
                f"in {image_dir}; its objects are skipped",
            )
            continue
        size = root.find("size")
        found = declared_size(_text(size, "width"), _text(size, "height"), path, report, f"{xml_path}: <size>")
        if found is None:
            continue
        width, height = found
        boxes, labels, difficult = [], [], []
        for k, obj in enumerate(root.iter("object")):
            name = _text(obj, "name")
            where = f"{xml_path.name} object {k} ({name or '?'})"
            if name not in label_of:
                report.add("unknown class names", f"{where}: class {name!r} is not among {list(class_names)}")
                continue
            bnd = obj.find("bndbox")
            try:
                x1, y1, x2, y2 = (float(_text(bnd, t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                report.add("malformed boxes", f"{where}: bndbox needs numeric xmin, ymin, xmax, ymax")
                continue
            box, reason = check_box((x1 - 1, y1 - 1, x2, y2), width, height)
            if box is None:
                report.add(
                    f"boxes: {reason}", f"{where} in {width}x{height} image: bndbox {[x1, y1, x2, y2]}: {reason}"
                )
                continue
            boxes.append(box)
            labels.append(label_of[name])
            difficult.append(_text(obj, "difficult", "0") not in ("0", ""))
        rec = ImageRecord(image_id, path, width, height)
        if boxes:
            rec.boxes = np.array(boxes, np.float32).reshape(-1, 4)
            rec.labels = np.array(labels, np.int64)
            rec.iscrowd = np.array(difficult, bool)
            rec.areas = ((rec.boxes[:, 2] - rec.boxes[:, 0]) * (rec.boxes[:, 3] - rec.boxes[:, 1])).astype(np.float32)
        records.append(rec)
    if not records:
        raise DataError(f"{source}: none of its {len(files)} annotation files could be used ({report.summary()})")
    report.log()
    return records, report


class VocDataModule(DetectionDataModule):
    """Pascal VOC detection splits.

    Args:
        root: data set folder.
        train_split / val_split / test_split: split names (folders or ImageSets lists);
            ``val_split: null`` holds out ``val_fraction`` of train, ``test_split: null``
            uses the validation split.
        class_names: fix the classes and their order (default: names found in the
            training xml, sorted).
        Other arguments: see :class:`DetectionDataModule`.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        class_names: Sequence[str] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        self.split_names = {"train": train_split, "val": val_split, "test": test_split}
        self.fixed_class_names = list(class_names) if class_names else None

    def load_splits(self) -> dict[str, list]:
        if not self.root.is_dir():
            raise DataError(f"data.root={self.root}: folder not found")
        train_files = split_files(self.root, self.split_names["train"])
        self.class_names = self.fixed_class_names or scan_class_names(train_files)
        if not self.class_names:
            raise DataError(f"{self.root / self.split_names['train']}: no <object><name> found in any xml file")
        self.category_ids = list(range(1, len(self.class_names) + 1))
        source = self.root / self.split_names["train"]
        train, report = load_voc(train_files, self.class_names, source, self.report_for(source))
        require_boxes(train, source, report)
        if self.split_names["val"]:
            source = self.root / self.split_names["val"]
            val, _ = load_voc(
                split_files(self.root, self.split_names["val"]), self.class_names, source, self.report_for(source)
            )
        else:
            train, val = split_off(train, self.val_fraction)
        if self.split_names["test"]:
            source = self.root / self.split_names["test"]
            test, _ = load_voc(
                split_files(self.root, self.split_names["test"]), self.class_names, source, self.report_for(source)
            )
        else:
            test = val
        return {"train": train, "val": val, "test": test}
