"""Ultralytics YOLO detection data: a ``data.yaml`` plus one ``class cx cy w h`` txt file per image.

The yaml, as ultralytics and Roboflow write it::

    path: ../datasets/coco8     # dataset root (optional; default: the yaml's folder)
    train: images/train         # a folder of images, a txt file listing images, or a list of them
    val: images/val             # (or ``validation``); absent: data.val_fraction of train is held out
    test: images/test           # optional; absent: the val split is tested
    names: [person, bicycle]    # or {0: person, 1: bicycle}; ``nc: 2`` alone names them class_0...

Paths follow ultralytics' rules, with one difference: a relative ``path`` is looked up next to the
yaml first, then in the working directory (ultralytics looks in the working directory, then in its
``datasets_dir`` setting, which is not read here). Split entries are relative to ``path``; an entry
``../x`` that does not exist there is read as ``x`` (Roboflow exports). A listing txt's lines starting
with ``./`` are relative to the txt's folder, other relative lines to ``path``. Folders are searched
recursively for image files (hidden files left out), in sorted order.

Each image's label file is its path with the last ``/images/`` replaced by ``/labels/`` and the suffix
by ``.txt``. A line is ``class cx cy w h`` (normalised to [0, 1] of the image's size after EXIF
orientation), or ``class x1 y1 x2 y2 ... xn yn`` (a segment polygon, or an oriented box: its bounding
box is used). With ``kpt_shape`` in the yaml, the columns after the box (keypoints) are left out.

What real exports contain, and what happens to it (all counted; ``mode=check`` lists the counts):

- kept: images without a label file, and empty label files, as negatives (background images);
  boxes outside [0, 1], clipped to the image; segment polygons, as their bounding box;
- dropped: duplicate lines (once kept), class ids outside ``names`` (the box; a wrong ``names`` list is
  then visible in the check's counts instead of stopping the run), lines that are not 5 numbers or a
  polygon, boxes of zero size or less than a pixel inside the image after clipping, missing or
  unreadable images.

Classes keep their YOLO ids as category ids (``names: {0: a, 2: c}`` trains two classes and writes
predictions with ids 0 and 2).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mbtasks.data.detection import (
    AnnotationReport,
    DetectionDataModule,
    ImageRecord,
    check_box,
    image_size_of,
    orient_boxes,
    require_boxes,
    split_off,
    turning_orientation,
)
from mbtasks.data.image_files import ImageReadError, is_image_file
from mbtasks.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Normalised coordinates further than this outside [0, 1] count as "outside" (exporters round to 6 digits).
_TOLERANCE = 1e-6


@dataclass
class YoloSpec:
    """A parsed ``data.yaml``.

    Attributes:
        yaml_file: the file read.
        root: the dataset root (``path``) every split entry is relative to.
        names: class names, in the order of their ids.
        class_ids: the YOLO id of each name (``0..K-1`` for a list).
        splits: per split, the resolved entries (folders or listing txt files); None when absent.
        keypoint_columns: values after ``class cx cy w h`` on each line (``kpt_shape``), 0 without.
    """

    yaml_file: Path
    root: Path
    names: list[str]
    class_ids: list[int]
    splits: dict[str, list[Path] | None]
    keypoint_columns: int = 0


def find_data_yaml(root: Path) -> Path:
    """``root`` itself when it is a file, else the one ``*.yaml`` / ``*.yml`` in the folder.

    Raises:
        DataError: nothing there, no yaml in the folder, or several.
    """
    if root.is_file():
        return root
    if not root.is_dir():
        raise DataError(f"data.root={root}: not found (give the data.yaml file, or the folder that holds it)")
    found = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"data.root={root}: no .yaml file in the folder (give the data.yaml file itself)")
    named = [p for p in found if p.stem == "data"]
    if len(named) == 1:
        return named[0]
    raise DataError(f"data.root={root}: {len(found)} yaml files ({[p.name for p in found]}); give the one to read")


def _class_names(data: dict, path: Path) -> tuple[list[str], list[int]]:
    names, nc = data.get("names"), data.get("nc")
    if names is None:
        if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
            raise DataError(f"{path}: needs 'names' (a list, or a dict id: name), or 'nc' (a number of classes)")
        names = [f"class_{i}" for i in range(nc)]
    if isinstance(names, list):
        pairs = list(enumerate(names))
    elif isinstance(names, dict):
        pairs = []
        for key, name in names.items():
            cid = key if isinstance(key, int) and not isinstance(key, bool) else None
            if isinstance(key, str) and key.strip().isdigit():
                cid = int(key)
            if cid is None or cid < 0:
                raise DataError(f"{path}: names key {key!r}: class ids are integers >= 0 (names: {{0: person, ...}})")
            pairs.append((cid, name))
        pairs.sort()
    else:
        raise DataError(f"{path}: 'names' is a {type(names).__name__}; expected a list or a dict id: name")
    if not pairs:
        raise DataError(f"{path}: 'names' is empty")
    bad = [n for _, n in pairs if not isinstance(n, str | int) or isinstance(n, bool) or str(n) == ""]
    if bad:
        raise DataError(f"{path}: class name {bad[0]!r} is not a name")
    out = [str(n) for _, n in pairs]
    if len(set(out)) != len(out):
        dup = next(n for n in out if out.count(n) > 1)
        raise DataError(f"{path}: class name {dup!r} is given twice; names must be unique")
    if isinstance(nc, int) and not isinstance(nc, bool) and nc != len(out):
        raise DataError(f"{path}: 'nc: {nc}' but 'names' has {len(out)} entries; they must match")
    return out, [cid for cid, _ in pairs]


def _resolve(root: Path, entry) -> Path:
    if not isinstance(entry, str) or not entry.strip():
        raise DataError(f"split entry {entry!r}: expected a folder or txt file path")
    path = Path(entry).expanduser()
    if path.is_absolute():
        return path
    full = (root / entry).resolve()
    if not full.exists() and entry.startswith("../"):  # Roboflow writes ../train/images next to the yaml
        full = (root / entry[3:]).resolve()
    return full


def read_data_yaml(path: Path) -> YoloSpec:
    """Parse and resolve an ultralytics ``data.yaml`` (see the module docstring for the rules).

    Raises:
        DataError: unreadable yaml, no ``train``, bad ``names``, a ``path`` that does not exist.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DataError(f"{path}: cannot be read as yaml ({err})") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping with train, val and names")
    if "val" not in data and "validation" in data:
        data["val"] = data["validation"]
    if not data.get("train"):
        raise DataError(f"{path}: 'train' is not set (a folder of images, a txt file listing them, or a list)")
    names, ids = _class_names(data, path)
    root = path.parent
    if data.get("path"):
        given = Path(str(data["path"])).expanduser()
        candidates = [given] if given.is_absolute() else [path.parent / given, Path.cwd() / given]
        root = next((c for c in candidates if c.is_dir()), None)
        if root is None:
            raise DataError(f"{path}: path: {data['path']} is not a folder (looked for {[str(c) for c in candidates]})")
        root = root.resolve()
    splits: dict[str, list[Path] | None] = {}
    for split in SPLITS:
        entry = data.get(split)
        if not entry:
            splits[split] = None
            continue
        entries = entry if isinstance(entry, list) else [entry]
        splits[split] = [_resolve(root, e) for e in entries]
    kpt = data.get("kpt_shape")
    columns = 0
    if kpt is not None:
        if (
            not isinstance(kpt, list)
            or len(kpt) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in kpt)
        ):
            raise DataError(f"{path}: kpt_shape: {kpt!r}: expected [keypoints, 2 or 3]")
        columns = kpt[0] * kpt[1]
    return YoloSpec(path, root, names, ids, splits, columns)


def label_path(image: Path | str) -> Path:
    """Ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the suffix ``.txt``."""
    text = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = sb.join(text.rsplit(sa, 1))
    return Path(text.rsplit(".", 1)[0] + ".txt")


def list_images(entries: list[Path], root: Path, report: AnnotationReport) -> list[Path]:
    """The image files of a split's entries (folders searched recursively, txt files read), sorted.

    Raises:
        DataError: an entry that does not exist, or no image at all.
    """
    found: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            found += [p for p in entry.rglob("*") if is_image_file(p) and not p.name.startswith(".") and p.is_file()]
        elif entry.is_file():
            try:
                lines = [line.strip() for line in entry.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as err:
                raise DataError(f"{entry}: the image listing cannot be read ({err})") from err
            for line in lines:
                if line.startswith("./"):
                    path = entry.parent / line[2:]
                else:
                    path = Path(line) if Path(line).is_absolute() else root / line
                if not is_image_file(path):
                    report.add("listed files that are not images", f"{entry}: {line!r} has no image suffix")
                elif not path.is_file():
                    report.add("missing image files", f"{entry}: listed image {path} not found")
                else:
                    found.append(path)
        else:
            raise DataError(f"{entry}: split entry not found (a folder of images or a txt file listing them)")
    if not found and not report.counts:
        raise DataError(f"{[str(e) for e in entries]}: no image files found")
    return sorted(set(found), key=str)


def _as_class(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value == int(value) else None


def parse_label_lines(
    text: str, where: str, keypoint_columns: int, report: AnnotationReport
) -> list[tuple[int, tuple[float, float, float, float]]]:
    """``(class id, normalised x1y1x2y2)`` per usable line of one label file, duplicates removed.

    Out-of-range coordinates are returned as they are (the caller clips and counts them).
    """
    out: list[tuple[int, tuple[float, float, float, float]]] = []
    seen: set = set()
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        at = f"{where}:{number}"
        cls = _as_class(tokens[0])
        try:
            values = [float(t) for t in tokens[1:]]
        except ValueError:
            values = []
        n = len(values)
        if cls is None or not values or not all(math.isfinite(v) for v in values):
            report.add("malformed label lines", f"{at}: {line.strip()[:80]!r}: expected 'class cx cy w h' numbers")
            continue
        if keypoint_columns and n == 4 + keypoint_columns:
            values, n = values[:4], 4
        if n == 4:
            cx, cy, w, h = values
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        elif n >= 6 and n % 2 == 0:
            xs, ys = values[0::2], values[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
            report.keep("segment polygons (their bounding box is used)", f"{at}: a polygon of {n // 2} points")
        else:
            report.add(
                "malformed label lines",
                f"{at}: {len(tokens)} values; expected 'class cx cy w h' (5) or "
                "'class x1 y1 x2 y2 x3 y3 ...' (a polygon, an odd count >= 7)",
            )
            continue
        key = (cls, *values)
        if key in seen:
            report.add("duplicate label lines", f"{at}: repeats an earlier line; kept once")
            continue
        seen.add(key)
        out.append((cls, box))
    return out


def load_yolo(
    images: list[Path], class_ids: list[int], keypoint_columns: int, report: AnnotationReport
) -> list[ImageRecord]:
    """Read the label file of every image into records (boxes in pixels, ``x1y1x2y2``)."""
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    records = []
    for image in images:
        labels_file = label_path(image)
        try:
            width, height = image_size_of(image)
        except ImageReadError as err:
            report.add("unreadable images", str(err))
            continue
        rec = ImageRecord(len(records), image, width, height)
        records.append(rec)
        if not labels_file.is_file():
            report.keep("images without a label file (negatives)", f"{image}: no {labels_file}; kept as a negative")
            continue
        try:
            text = labels_file.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not a class id
        except (OSError, UnicodeDecodeError) as err:
            report.add("unreadable label files", f"{labels_file}: {err}; the image is kept without boxes")
            continue
        lines = parse_label_lines(text, str(labels_file), keypoint_columns, report)
        if not text.strip():
            report.keep("empty label files (negatives)", f"{labels_file}: empty; the image is kept as a negative")
        boxes, labels = [], []
        for cls, (x1, y1, x2, y2) in lines:
            where = f"{labels_file.name} class {cls}"
            if cls not in label_of:
                report.add(
                    "class ids outside names",
                    f"{labels_file}: class id {cls} is not among the names' ids {class_ids}; the box is dropped",
                )
                continue
            if min(x1, y1) < -_TOLERANCE or max(x2, y2) > 1 + _TOLERANCE:
                report.keep("boxes outside [0, 1] (clipped)", f"{where}: x1y1x2y2 {[x1, y1, x2, y2]} is clipped")
            box, reason = check_box((x1 * width, y1 * height, x2 * width, y2 * height), width, height)
            if box is None:
                report.add(
                    f"boxes: {reason}",
                    f"{where} in {width}x{height} image: normalised x1y1x2y2 {[x1, y1, x2, y2]}: {reason}",
                )
                continue
            boxes.append(box)
            labels.append(label_of[cls])
        if boxes:
            rec.set_boxes(boxes, labels, np.zeros(len(boxes), bool))
    report.log()
    return records


class YoloDataModule(DetectionDataModule):
    """Ultralytics YOLO detection splits from a ``data.yaml`` (see the module docstring).

    Args:
        root: the ``data.yaml`` file, or the folder that holds it (its one yaml file, or ``data.yaml``).
        val_fraction: share of train held out when the yaml has no ``val``.
        Other arguments: see :class:`DetectionDataModule`.
    """

    def __init__(
        self,
        root: str,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        self.spec: YoloSpec | None = None

    def _load(self, split: str) -> tuple[list[ImageRecord], AnnotationReport]:
        entries = self.spec.splits[split]
        source = f"{self.spec.yaml_file} {split}: " + ", ".join(str(e) for e in entries)
        report = self.report_for(source)
        images = list_images(entries, self.spec.root, report)
        records = load_yolo(images, self.spec.class_ids, self.spec.keypoint_columns, report)
        if not records:
            raise DataError(f"{source}: none of its images could be used ({report.summary()})")
        return records, report

    def load_splits(self) -> dict[str, list]:
        self.spec = read_data_yaml(find_data_yaml(self.root))
        self.class_names, self.category_ids = list(self.spec.names), list(self.spec.class_ids)
        train, report = self._load("train")
        require_boxes(train, report.source, report)
        if self.spec.splits["val"]:
            val, _ = self._load("val")
        else:
            train, val = split_off(train, self.val_fraction)
        test = self._load("test")[0] if self.spec.splits["test"] else val
        return {"train": train, "val": val, "test": test}


def effective_boxes(rec: ImageRecord) -> tuple[np.ndarray, int, int]:
    """``(boxes, width, height)`` of a record as training sees it: in the pixels of the decoded image
    (EXIF-turned boxes turned, boxes of a mis-sized annotation rescaled), as ``DetectionDataset`` does."""
    width, height = image_size_of(rec.path)
    boxes = rec.boxes
    if (width, height) != (rec.width, rec.height) and rec.width and rec.height:
        orientation = turning_orientation(rec, (width, height))
        if orientation:
            boxes = orient_boxes(boxes, orientation, rec.width, rec.height)
        else:
            boxes = boxes * np.array([width / rec.width, height / rec.height] * 2, np.float32)
    return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32), width, height


def write_yolo(datamodule: DetectionDataModule, out: str | Path, link: bool = True) -> Path:
    """Write a detection data module's splits as an ultralytics YOLO dataset; returns the ``data.yaml``.

    Layout: ``out/images/<split>/<file>`` (a symlink to the original image, or a copy with
    ``link=False`` or where links are not allowed), ``out/labels/<split>/<stem>.txt`` (one
    ``class cx cy w h`` line per box, 8 significant digits; empty for a negative), ``out/data.yaml``
    (``train`` / ``val`` / ``test`` relative to the yaml, ``names`` as ``{label: name}``). A test split
    that is the val split is not written twice.

    YOLO has no ignore flag: ignore regions (VOC ``difficult``, COCO ``iscrowd``...) are left out, as
    ultralytics' own VOC converter does. Boxes are normalised by the decoded image's size (after EXIF
    orientation), which is what ultralytics reads them against. Same-named images of one split get an
    index prefix.
    """
    out = Path(out)
    datamodule.setup("fit")
    names = {i: n for i, n in enumerate(datamodule.class_names)}
    written = {}
    for split, dataset in datamodule.datasets.items():
        if split == "test" and datamodule.test_split == "val":
            continue
        image_dir, label_dir = out / "images" / split, out / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for i, rec in enumerate(dataset.records):
            name = rec.path.name if rec.path.name not in used else f"{i:06d}_{rec.path.name}"
            used.add(name)
            target = image_dir / name
            if target.is_symlink() or target.exists():
                target.unlink()
            try:
                if not link:
                    raise OSError("copy asked for")
                target.symlink_to(rec.path.resolve())
            except OSError:
                shutil.copy2(rec.path, target)
            boxes, width, height = effective_boxes(rec)
            lines = []
            for (x1, y1, x2, y2), label, ignore in zip(boxes, rec.labels, rec.iscrowd, strict=True):
                if ignore:
                    continue
                cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
                w, h = (x2 - x1) / width, (y2 - y1) / height
                lines.append(f"{int(label)} {cx:.8g} {cy:.8g} {w:.8g} {h:.8g}")
            (label_dir / f"{Path(name).stem}.txt").write_text("".join(line + "\n" for line in lines))
        written[split] = f"images/{split}"
    data_yaml = out / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({**written, "names": names}, sort_keys=False))
    log.info("wrote YOLO dataset %s (%s)", data_yaml, ", ".join(written))
    return data_yaml
