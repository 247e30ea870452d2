"""Synthetic data sets written as real files in the formats users bring, so the default
runs need no download and exercise the same loaders a user's data does.

Each generator is deterministic (seeded) and writes once: a ``.complete`` marker with
the generator's parameters makes later calls a no-op, and a partial set is rewritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from mbtasks.data.synthetic.drawing import SHAPES, contrasting_color, draw_shape, maybe_blur, random_background

MARKER = ".complete"


def is_complete(root: Path, params: dict) -> bool:
    marker = root / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == params


def mark_complete(root: Path, params: dict) -> None:
    (root / MARKER).write_text(json.dumps(params, sort_keys=True))


def shapes_image(rng: np.random.Generator, kind: str, size: int) -> Image.Image:
    """One image of a single shape of ``kind`` at a random place, size, colour and angle."""
    img = random_background(rng, size, size)
    side = rng.uniform(0.35, 0.85) * size
    x0 = rng.uniform(0, size - side)
    y0 = rng.uniform(0, size - side)
    box = (x0, y0, x0 + side, y0 + side)
    draw_shape(img, kind, box, contrasting_color(rng, img, box), float(rng.uniform(0, 2 * np.pi)))
    return maybe_blur(rng, img)


def make_shapes_classification(
    root: str | Path,
    classes: tuple[str, ...] | list[str] = SHAPES[:6],
    train_per_class: int = 150,
    val_per_class: int = 40,
    test_per_class: int = 40,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write an ImageFolder ``root/{train,val,test}/<class>/<n>.png`` of shape images.

    Returns:
        the root path. Does nothing if a complete set with the same parameters exists.
    """
    root = Path(root)
    params = dict(
        kind="shapes_classification",
        classes=list(classes),
        train=train_per_class,
        val=val_per_class,
        test=test_per_class,
        size=image_size,
        seed=seed,
    )
    if is_complete(root, params):
        return root
    unknown = [c for c in classes if c not in SHAPES]
    if unknown:
        raise ValueError(f"data.synthetic.classes: unknown shapes {unknown}; expected some of {list(SHAPES)}")
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class), ("test", test_per_class)):
        for cls in classes:
            out = root / split / cls
            out.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shapes_image(rng, cls, image_size).save(out / f"{i:05d}.png")
    mark_complete(root, params)
    return root


def overlaps_too_much(box: tuple[float, ...], placed: list[tuple[float, ...]], max_cover: float) -> bool:
    """True when ``box`` would hide more than ``max_cover`` of an already placed box (or vice versa)."""
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for px0, py0, px1, py1 in placed:
        inter = max(0.0, min(x1, px1) - max(x0, px0)) * max(0.0, min(y1, py1) - max(y0, py0))
        if inter > max_cover * min(area, (px1 - px0) * (py1 - py0)):
            return True
    return False


def shapes_scene(
    rng: np.random.Generator,
    classes: tuple[str, ...] | list[str],
    size: int,
    max_objects: int,
    object_size: tuple[float, float],
    empty_fraction: float,
    max_cover: float,
) -> tuple[Image.Image, list[tuple[int, tuple[float, float, float, float]]]]:
    """One detection image: 0..``max_objects`` shapes on a random background.

    Shape sides are log-uniform in ``object_size`` (fractions of the image side), so small
    objects are frequent; later shapes may partly cover earlier ones (at most ``max_cover``
    of the smaller box). Each shape's colour contrasts with the background under it.

    Returns:
        the image and ``[(class index, tight x1y1x2y2 box)]`` of what was drawn.
    """
    img = random_background(rng, size, size)
    n = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    placed: list[tuple[float, float, float, float]] = []
    objects = []
    lo, hi = np.log(object_size[0] * size), np.log(object_size[1] * size)
    for _ in range(n):
        for _attempt in range(20):
            side = float(np.exp(rng.uniform(lo, hi)))
            x0, y0 = rng.uniform(0, size - side, size=2)
            box = (float(x0), float(y0), float(x0 + side), float(y0 + side))
            if not overlaps_too_much(box, placed, max_cover):
                break
        else:
            continue
        kind = int(rng.integers(len(classes)))
        tight = draw_shape(img, classes[kind], box, contrasting_color(rng, img, box), float(rng.uniform(0, 2 * np.pi)))
        placed.append(box)
        objects.append((kind, tight))
    return maybe_blur(rng, img, p=0.2), objects


def make_shapes_detection(
    root: str | Path,
    classes: tuple[str, ...] | list[str] = SHAPES[:6],
    category_ids: list[int] | None = None,
    train_images: int = 1200,
    val_images: int = 150,
    test_images: int = 300,
    image_size: int = 128,
    max_objects: int = 6,
    object_size: tuple[float, float] | list[float] = (0.1, 0.5),
    empty_fraction: float = 0.03,
    max_cover: float = 0.35,
    seed: int = 0,
) -> Path:
    """Write a COCO-format detection set of shape scenes.

    Layout: ``root/{train,val,test}/<n>.png`` and ``root/annotations/instances_<split>.json``
    (real COCO json: images with sizes, annotations with ``bbox`` [x, y, w, h], ``area``,
    ``iscrowd``; categories). Category ids are ``category_ids`` (default 1, 3, 5, ...: gaps,
    as in COCO, so the id mapping is exercised by the default run).

    Returns:
        the root path. Does nothing if a complete set with the same parameters exists.
    """
    root = Path(root)
    category_ids = list(category_ids) if category_ids is not None else [2 * i + 1 for i in range(len(classes))]
    params = dict(
        kind="shapes_detection",
        classes=list(classes),
        category_ids=category_ids,
        train=train_images,
        val=val_images,
        test=test_images,
        size=image_size,
        max_objects=max_objects,
        object_size=list(object_size),
        empty=empty_fraction,
        cover=max_cover,
        seed=seed,
    )
    if is_complete(root, params):
        return root
    unknown = [c for c in classes if c not in SHAPES]
    if unknown:
        raise ValueError(f"data.generator.classes: unknown shapes {unknown}; expected some of {list(SHAPES)}")
    if len(category_ids) != len(classes):
        raise ValueError(f"data.generator.category_ids: {len(category_ids)} ids for {len(classes)} classes")
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    categories = [
        {"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(category_ids, classes, strict=True)
    ]

    def scenes(n: int):
        for _ in range(n):
            img, objects = shapes_scene(
                rng, classes, image_size, max_objects, tuple(object_size), empty_fraction, max_cover
            )
            boxes = [
                (kind, round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2))
                for kind, (x0, y0, x1, y1) in objects
            ]
            yield (
                img,
                [
                    {"category_id": category_ids[kind], "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0}
                    for kind, x, y, w, h in boxes
                ],
            )

    ann_id = 1
    for split, n in (("train", train_images), ("val", val_images), ("test", test_images)):
        ann_id = write_coco_split(
            root, split, scenes(n), image_size, categories, "mbtasks synthetic shapes detection", ann_id
        )
    mark_complete(root, params)
    return root


def write_coco_split(
    root: Path, split: str, scenes, image_size: int, categories: list[dict], description: str, first_ann_id: int = 1
) -> int:
    """Write ``root/<split>/<n>.png`` and ``root/annotations/instances_<split>.json`` from ``scenes``
    (``(image, [annotation without id / image_id])`` pairs, drawn lazily so the RNG order is the
    caller's); returns the next free annotation id."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations, ann_id = [], [], first_ann_id
    for i, (img, objects) in enumerate(scenes):
        name = f"{i:05d}.png"
        img.save(root / split / name)
        images.append({"id": i + 1, "file_name": name, "width": image_size, "height": image_size})
        for obj in objects:
            annotations.append({"id": ann_id, "image_id": i + 1, **obj})
            ann_id += 1
    coco = {
        "info": {"description": description},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return ann_id
