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
        "annotations": annotations
        if annotations is not None
        else [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }
    if drop:
        data.pop(drop)
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json"


def box(ann_id: int, bbox, category_id: int = 1, image_id: int = 1) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": max(0.0, bbox[2] * bbox[3]),
        "iscrowd": 0,
    }


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, extra_chunks: bytes = b"") -> bytes:
    """A tiny PNG whose header claims ``width x height`` (its pixel data is a few bytes)."""
    import struct
    import zlib

    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n" + header + extra_chunks + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b"")
    )


def png_text_bomb(inflated: int = 8 * 1024 * 1024) -> bytes:
    """A valid 4x4 PNG plus a zTXt chunk of a few KiB that inflates to ``inflated`` bytes."""
    import zlib

    real = png_bytes(4)
    bomb = _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * inflated, 9))
    return real[:33] + bomb + real[33:]  # after the signature (8) and IHDR (25)


def tiff_bytes(mode: str, values) -> bytes:
    """A TIFF of one of PIL's numeric modes (``I;16``, ``I;16B``, ``I``, ``F``) holding ``values`` (2D)."""
    import numpy as np

    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4", "F": "<f4"}[mode]
    arr = np.asarray(values, dtype=dtype)
    buf = io.BytesIO()
    Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.tobytes()).save(buf, format="TIFF")
    return buf.getvalue()


def voc_pair(folder: Path, stem: str = "a", width="64", height="64", filename: str | None = None) -> Path:
    """``folder/<stem>.png`` (64x64) and ``<stem>.xml`` with one ``thing`` box and the given ``<size>`` texts."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.png").write_bytes(png_bytes(64))
    (folder / f"{stem}.xml").write_text(
        f"<annotation><filename>{filename or stem + '.png'}</filename><size><width>{width}</width>"
        f"<height>{height}</height></size><object><name>thing</name><bndbox><xmin>9</xmin><ymin>9</ymin>"
        "<xmax>30</xmax><ymax>30</ymax></bndbox></object></annotation>"
    )
    return folder


def fake_checkpoint(path: Path, task: str = "classification") -> Path:
    """A minimal mbtasks checkpoint of ``task`` (enough for the task check, not to rebuild the model)."""
    import torch

    target = {
        "classification": "mbtasks.tasks.classification.ClassificationTask",
        "detection": "mbtasks.tasks.detection.DetectionTask",
        "embedding": "mbtasks.tasks.embedding.EmbeddingTask",
    }[task]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "mbtasks": {"format": 2, "task": task, "config": {"task": {"_target_": target}}, "info": {}},
            "state_dict": {},
        },
        path,
    )
    return path
