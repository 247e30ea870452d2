"""WIDER FACE annotations (Yang et al., "WIDER FACE: A Face Detection Benchmark", CVPR 2016):
``wider_face_split/wider_face_{train,val}_bbx_gt.txt`` with images under ``WIDER_{train,val}/images/``.

The txt is a stream of records::

    0--Parade/0_Parade_marchingband_1_849.jpg       file name, relative to the images folder
    1                                               number of faces
    449 330 122 149 0 0 0 0 0 0                     x1 y1 w h blur expression illumination invalid occlusion pose

A count of 0 is followed by one line of zeros (read and skipped; a file that leaves it out is read too).
Boxes become ``x1y1x2y2 = (x1, y1, x1 + w, y1 + h)`` pixels.

Ignore regions (not trained on; matches to them are neither hits nor false alarms in evaluation),
as the protocol has it: faces flagged ``invalid`` and faces ``ignore_height`` pixels tall or less
(the paper gives faces of 10 pixels or less an "Ignore" flag; ``ignore_height: 0`` trains on them).
The six flags are kept per box as attributes (``blur`` 0 clear / 1 normal / 2 heavy, ``expression``
0 typical / 1 exaggerated, ``illumination`` 0 normal / 1 extreme, ``invalid``, ``occlusion`` 0 none /
1 partial / 2 heavy, ``pose`` 0 typical / 1 atypical); the COCO export writes them. Boxes of zero size
(the txt has some) are dropped and counted. The test split's labels are not public: ``test_ann: null``
tests on val.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from mbtasks.data.detection import (
    AnnotationReport,
    DetectionDataModule,
    ImageRecord,
    check_box,
    image_size_of,
    require_boxes,
    split_off,
)
from mbtasks.data.image_files import ImageReadError, inside_folder, is_image_file
from mbtasks.errors import DataError
from mbtasks.metrics.wider import WiderGroundTruth, read_wider_mat

log = logging.getLogger(__name__)

FLAGS = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")


def parse_wider(path: Path) -> list[tuple[str, int, list[list[float]]]]:
    """``(file name, line number, box rows)`` per image of a ``wider_face_*_bbx_gt.txt``.

    Box rows are the numbers of each face line as given (``x1 y1 w h`` and up to six flags); rows
    that are not numbers come back as ``[]`` (the caller counts them).

    Raises:
        DataError: the file is missing, or its structure is broken (a count that is not a number, fewer
            face lines than the count says), naming the line.
    """
    if not path.is_file():
        raise DataError(f"{path}: WIDER FACE annotation file not found")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read ({err})") from err
    out = []
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        if not is_image_file(name):
            raise DataError(f"{path}:{i + 1}: expected an image file name, got {name[:80]!r}")
        start = i + 1
        count_text = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if not count_text.isdigit():
            raise DataError(f"{path}:{i + 2}: expected the number of faces of {name}, got {count_text[:80]!r}")
        count = int(count_text)
        i += 2
        rows = []
        for k in range(count):
            if i >= len(lines) or is_image_file(lines[i].strip()):
                raise DataError(
                    f"{path}:{i + 1}: {name} (line {start}) says {count} faces, but only {k} face lines follow"
                )
            try:
                rows.append([float(v) for v in lines[i].split()])
            except ValueError:
                rows.append([])
            i += 1
        if count == 0 and i < len(lines) and lines[i].strip() and not is_image_file(lines[i].strip()):
            i += 1  # the line of zeros after a count of 0
        out.append((name, start, rows))
    return out


def load_wider(
    ann_file: Path, image_dir: Path, ignore_height: float = 10.0, report: AnnotationReport | None = None
) -> tuple[list[ImageRecord], AnnotationReport]:
    """Read one split's annotation file into single-class (``face``) records.

    Raises:
        DataError: see :func:`parse_wider`; or no image of the file can be used.
    """
    report = report if report is not None else AnnotationReport(ann_file)
    entries = parse_wider(ann_file)
    records = []
    for name, line, rows in entries:
        if not inside_folder(name):
            report.add(
                "file names outside the image folder",
                f"line {line}: {name!r} is absolute or climbs out of {image_dir} with '..'; it is not read",
            )
            continue
        path = image_dir / name
        if not path.is_file():
            report.add("missing image files", f"line {line}: {path} not found; its faces are skipped")
            continue
        try:
            width, height = image_size_of(path)
        except ImageReadError as err:
            report.add("unreadable images", str(err))
            continue
        boxes, ignore, flags = [], [], []
        for k, row in enumerate(rows):
            where = f"{name} face {k} (line {line + 2 + k})"
            if len(row) < 4:
                report.add("malformed face lines", f"{where}: expected x1 y1 w h and six flags")
                continue
            x1, y1, w, h = row[:4]
            box, reason = check_box((x1, y1, x1 + w, y1 + h), width, height)
            if box is None:
                report.add(
                    f"boxes: {reason}", f"{where} in {width}x{height} image: x1 y1 w h = {[x1, y1, w, h]}: {reason}"
                )
                continue
            row_flags = [int(v) for v in (row[4:10] + [0.0] * 6)[:6]]
            invalid, small = row_flags[3] == 1, h <= ignore_height
            if invalid:
                report.keep("invalid faces (ignore regions)", f"{where}: flagged invalid")
            elif small:
                report.keep(f"faces {ignore_height:g} px tall or less (ignore regions)", f"{where}: {h:g} px tall")
            boxes.append(box)
            ignore.append(invalid or small)
            flags.append(row_flags)
        rec = ImageRecord(len(records), path, width, height)
        if boxes:
            table = np.array(flags, np.uint8).reshape(-1, len(FLAGS))
            rec.set_boxes(boxes, np.zeros(len(boxes), np.int64), ignore, {f: table[:, j] for j, f in enumerate(FLAGS)})
        records.append(rec)
    if not records:
        raise DataError(f"{ann_file}: none of its {len(entries)} images could be used ({report.summary()})")
    report.log()
    return records, report


class WiderFaceDataModule(DetectionDataModule):
    """WIDER FACE splits, one class ``face`` (see the module docstring).

    Args:
        root: the folder holding ``wider_face_split/`` and ``WIDER_{train,val}/``; paths below are
            relative to it (or absolute).
        train_ann / train_images: the training annotation txt and its image folder.
        val_ann / val_images: validation; ``null`` holds out ``val_fraction`` of train.
        test_ann / test_images: test; ``null`` tests on val.
        ignore_height: faces this many pixels tall or less are ignore regions (0: none by size).
        eval_wider: val / test also report WIDER-style AP (``wider_ap_all``, see
            :mod:`mbtasks.metrics.wider`) beside COCO's mAP.
        wider_eval_dir: eval_tools' ``ground_truth/`` folder (``wider_face_val.mat`` and
            ``wider_{easy,medium,hard}_val.mat``): adds the official ``wider_ap_easy/medium/hard``
            (needs scipy). ``null``: only ``wider_ap_all``.
        Other arguments: see :class:`DetectionDataModule`.
    """

    def __init__(
        self,
        root: str,
        train_ann: str = "wider_face_split/wider_face_train_bbx_gt.txt",
        train_images: str = "WIDER_train/images",
        val_ann: str | None = "wider_face_split/wider_face_val_bbx_gt.txt",
        val_images: str | None = "WIDER_val/images",
        test_ann: str | None = None,
        test_images: str | None = None,
        ignore_height: float = 10.0,
        eval_wider: bool = True,
        wider_eval_dir: str | None = None,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        self.split_files = {
            "train": (train_ann, train_images),
            "val": (val_ann, val_images),
            "test": (test_ann, test_images),
        }
        self.ignore_height = float(ignore_height)
        self.eval_wider = bool(eval_wider)
        self.wider_eval_dir = wider_eval_dir
        # the official easy / medium / hard face lists, read at setup (a bad folder fails before training)
        self.wider_ground_truth: WiderGroundTruth | None = None

    def _load(self, split: str) -> tuple[list[ImageRecord], AnnotationReport]:
        ann, images = self.split_files[split]
        if not images:
            raise DataError(f"data.{split}_images is not set but data.{split}_ann={ann} is")
        report = self.report_for(self.root / ann)
        return load_wider(self.root / ann, self.root / images, self.ignore_height, report)

    def load_splits(self) -> dict[str, list]:
        if not self.split_files["train"][0]:
            raise DataError("data.train_ann is not set: give wider_face_train_bbx_gt.txt (relative to data.root)")
        self.class_names, self.category_ids = ["face"], [1]
        train, report = self._load("train")
        require_boxes(train, report.source, report)
        if self.split_files["val"][0]:
            val = self._load("val")[0]
        else:
            train, val = split_off(train, self.val_fraction)
        test = self._load("test")[0] if self.split_files["test"][0] else val
        if self.eval_wider and self.wider_eval_dir:
            try:
                self.wider_ground_truth = read_wider_mat(self.root / self.wider_eval_dir)
            except DataError as err:
                raise DataError(f"data.wider_eval_dir={self.wider_eval_dir}: {err}") from err
        return {"train": train, "val": val, "test": test}

    def wider_keys(self, split: str) -> dict[int, tuple[str, str]]:
        """Image id -> ``(event folder, file name without extension)``, the official .mat files' key."""
        return {r.image_id: (r.path.parent.name, r.path.stem) for r in self.datasets[split].records}
