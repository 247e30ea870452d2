"""dlib imglab XML detection data (dlib's face and object detector examples, imglab's own files)::

    <dataset><images>
      <image file='2008_002470.jpg' width='500' height='332'>
        <box top='181' left='274' width='52' height='53'/>
        <box top='10' left='20' width='30' height='30' ignore='1'><label>face</label></box>
      </image>
    </images></dataset>

``file`` is relative to the xml's folder (absolute names and ``..`` are refused and counted, as
the COCO and VOC readers do). A box is ``left, top, width, height`` pixels:
it becomes ``x1y1x2y2 = (left, top, left + width, top + height)``. Its class is its ``<label>``, else
``default_label``. ``ignore='1'`` (dlib's own meaning: not a positive, not a negative) and
``difficult='1'`` boxes are ignore regions, as VOC's ``difficult``: not trained on, not counted as
misses. ``occluded`` / ``truncated`` flags are kept as box attributes; ``<part>`` landmarks are not
read. An ``<image>`` without boxes is a negative.
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
    as_number,
    check_box,
    declared_size,
    require_boxes,
    split_off,
)
from mbtasks.data.image_files import inside_folder
from mbtasks.errors import DataError

log = logging.getLogger(__name__)

# box attributes that mark an ignore region (imglab writes them as '1' when set)
IGNORE_FLAGS = ("ignore", "difficult")
# box attributes kept per box (0 / 1)
KEPT_FLAGS = ("occluded", "truncated")


def read_imglab(path: Path) -> ET.Element:
    """The ``<images>`` element of an imglab file.

    Raises:
        DataError: a missing or unparsable file, or no ``<images>`` element.
    """
    if not path.is_file():
        raise DataError(f"{path}: dlib imglab xml not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path}: not valid xml ({err})") from err
    images = root if root.tag == "images" else root.find("images")
    if images is None:
        raise DataError(f"{path}: no <images> element (expected <dataset><images><image file=...>)")
    return images


def _label(box: ET.Element) -> str:
    node = box.find("label")
    return node.text.strip() if node is not None and node.text and node.text.strip() else ""


def _flag(box: ET.Element, name: str) -> bool:
    return box.get(name, "0").strip() not in ("0", "", "false")


def scan_labels(path: Path, default_label: str) -> list[str]:
    """Sorted class names found in a file's boxes (``default_label`` for boxes without ``<label>``)."""
    return sorted({_label(b) or default_label for b in read_imglab(path).iter("box")})


def load_imglab(
    path: Path, class_names: Sequence[str], default_label: str, report: AnnotationReport | None = None
) -> tuple[list[ImageRecord], AnnotationReport]:
    """Read one imglab file, skipping (and counting) what cannot be used.

    Raises:
        DataError: the file cannot be read, or none of its images can be used.
    """
    report = report if report is not None else AnnotationReport(path)
    label_of = {n: i for i, n in enumerate(class_names)}
    entries = read_imglab(path).findall("image")
    records = []
    for entry in entries:
        name = entry.get("file", "")
        if name and not inside_folder(name):
            report.add(
                "file names outside the image folder",
                f"{path.name}: file {name!r} is absolute or climbs out of {path.parent} with '..'; it is not read",
            )
            continue
        image = (path.parent / name) if name else None
        if image is None or not image.is_file():
            report.add(
                "missing image files",
                f"{path.name}: image file {name!r} not found next to the xml; its boxes are skipped",
            )
            continue
        size = declared_size(entry.get("width"), entry.get("height"), image, report, f"{name}:")
        if size is None:
            continue
        width, height = size
        boxes, labels, ignore, flags = [], [], [], {k: [] for k in KEPT_FLAGS}
        for k, box in enumerate(entry.findall("box")):
            cls = _label(box) or default_label
            where = f"{name} box {k} ({cls})"
            if cls not in label_of:
                report.add("unknown class names", f"{where}: label {cls!r} is not among {list(class_names)}")
                continue
            left, top, w, h = (as_number(box.get(a)) for a in ("left", "top", "width", "height"))
            if None in (left, top, w, h):
                report.add("malformed boxes", f"{where}: needs numeric top, left, width, height attributes")
                continue
            checked, reason = check_box((left, top, left + w, top + h), width, height)
            if checked is None:
                report.add(
                    f"boxes: {reason}",
                    f"{where} in {width}x{height} image: left={left} top={top} width={w} height={h}: {reason}",
                )
                continue
            boxes.append(checked)
            labels.append(label_of[cls])
            ignore.append(any(_flag(box, f) for f in IGNORE_FLAGS))
            for f in KEPT_FLAGS:
                flags[f].append(_flag(box, f))
        rec = ImageRecord(len(records), image, width, height)
        if boxes:
            rec.set_boxes(boxes, labels, ignore, {k: np.array(v, np.uint8) for k, v in flags.items()})
        records.append(rec)
    if not records:
        raise DataError(f"{path}: none of its {len(entries)} images could be used ({report.summary()})")
    report.log()
    return records, report


class DlibXmlDataModule(DetectionDataModule):
    """Detection splits from dlib imglab xml files (see the module docstring).

    Args:
        root: folder the xml paths below are relative to (or absolute).
        train_xml: the training file.
        val_xml: the validation file; ``null`` holds out ``val_fraction`` of train.
        test_xml: the test file; ``null`` tests on the validation split.
        default_label: class of boxes without a ``<label>`` (dlib's face sets have none).
        class_names: fix the classes and their order (default: the labels found in train, sorted).
        eval_wider: val / test also report WIDER-style AP of the ``face`` class (``wider_ap_all``,
            see :mod:`mbtasks.metrics.wider`) beside COCO's mAP.
        Other arguments: see :class:`DetectionDataModule`.
    """

    def __init__(
        self,
        root: str,
        train_xml: str = "training.xml",
        val_xml: str | None = None,
        test_xml: str | None = "testing.xml",
        default_label: str = "face",
        class_names: Sequence[str] | None = None,
        eval_wider: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        self.files = {"train": train_xml, "val": val_xml, "test": test_xml}
        self.default_label = str(default_label)
        self.fixed_class_names = list(class_names) if class_names else None
        self.eval_wider = bool(eval_wider)

    def _load(self, split: str) -> list[ImageRecord]:
        path = self.root / self.files[split]
        return load_imglab(path, self.class_names, self.default_label, self.report_for(path))[0]

    def load_splits(self) -> dict[str, list]:
        if not self.files["train"]:
            raise DataError("data.train_xml is not set: give the training imglab xml (relative to data.root)")
        train_path = self.root / self.files["train"]
        self.class_names = self.fixed_class_names or scan_labels(train_path, self.default_label)
        if not self.class_names:
            raise DataError(f"{train_path}: no <box> in any <image>")
        self.category_ids = list(range(1, len(self.class_names) + 1))
        report = self.report_for(train_path)
        train, _ = load_imglab(train_path, self.class_names, self.default_label, report)
        require_boxes(train, train_path, report)
        if self.files["val"]:
            val = self._load("val")
        else:
            train, val = split_off(train, self.val_fraction)
        test = self._load("test") if self.files["test"] else val
        return {"train": train, "val": val, "test": test}
