"""The bad-input corpus: each case writes its bad file(s) under a temporary folder at test time.

Nothing binary is committed: a case is a small builder plus the behaviour we promise
(see ``tests/test_bad_inputs.py`` for the table and ``docs/reliability.md``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image


def png_bytes(size: int = 32, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def image_folder(root: Path, classes=("a", "b"), per_class: int = 2) -> Path:
    """``root/<class>/<i>.png``: a small valid ImageFolder split."""
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(png_bytes())
    return root


def coco(root: Path, annotations: list[dict] | None = None, drop: str | None = None, images: int = 2) -> Path:
    """``root/ann.json`` + ``root/img/<i>.png`` (64x64); ``drop`` removes a top-level key."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        (root / "img" / f"{i}.png").write_bytes(png_bytes(64))
    data = {
        "images": [{"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 64} for i in range(images)],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }
    if drop:
        data.pop(drop)
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json"


def box(ann_id: int, bbox, category_id: int = 1, image_id: int = 1) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": max(0.0, bbox[2] * bbox[3]), "iscrowd": 0}
