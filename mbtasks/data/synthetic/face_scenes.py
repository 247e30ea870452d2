"""Synthetic face scenes for the detect-then-embed pipeline, written as a real COCO-json set.

Each scene pastes 0-``max_faces`` faces of procedural identities (:mod:`mbtasks.data.synthetic.faces`)
at different sizes into a background with distractor shapes. A face is the identity's rendered
portrait (the framing the embedder is trained on) blended in through a feathered ellipse; its
box is the portrait's square, so a detection cropped with no margin frames a face as the
embedder's training images do. Annotations carry the face's ``identity``.

Layout::

    root/{train,val,test}/<n>.png
    root/annotations/instances_{train,val,test}.json   category 1 "face"; annotations + "identity"
    root/gallery/<identity>/<identity>_<k>.png          enrolment portraits of the val/test identities

Training scenes use other identities than val/test, and none of them is in the
``synthetic_faces`` set (other seeds), so an embedder trained there meets them for the first time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mbtasks.data.synthetic.drawing import SHAPES, contrasting_color, draw_shape, random_background
from mbtasks.data.synthetic.faces import render_face, sample_identity
from mbtasks.data.synthetic.shapes import is_complete, mark_complete, overlaps_too_much, write_coco_split

# identity seeds: [seed, IDENTITY_STREAM, i] (synthetic_faces uses [seed, i])
IDENTITY_STREAM = 7919


def _identity(seed: int, index: int) -> tuple[str, dict]:
    return f"person_{index:04d}", sample_identity(np.random.default_rng([seed, IDENTITY_STREAM, index]))


def _feathered_ellipse(side: int) -> Image.Image:
    """An ``L`` mask: an ellipse filling the square, its edge blurred over ~6% of the side."""
    mask = Image.new("L", (side, side), 0)
    inset = max(1, round(side * 0.04))
    ImageDraw.Draw(mask).ellipse((inset, inset, side - 1 - inset, side - 1 - inset), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(radius=max(0.5, side * 0.03)))


def face_scene(
    rng: np.random.Generator,
    identities: list[tuple[str, dict]],
    size: int,
    max_faces: int,
    face_size: tuple[float, float],
    distractors: int,
    max_cover: float,
) -> tuple[Image.Image, list[tuple[str, tuple[float, float, float, float]]]]:
    """One scene: shapes, then 0..``max_faces`` faces (side log-uniform in ``face_size`` x ``size``).

    Returns:
        the image and ``[(identity, x1y1x2y2 box)]`` of the faces pasted.
    """
    img = random_background(rng, size, size)
    for _ in range(int(rng.integers(0, distractors + 1))):  # clutter the detector must ignore
        side = float(rng.uniform(0.08, 0.3) * size)
        x0, y0 = rng.uniform(0, size - side, size=2)
        box = (float(x0), float(y0), float(x0 + side), float(y0 + side))
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        draw_shape(img, kind, box, contrasting_color(rng, img, box), float(rng.uniform(0, 2 * np.pi)))
    n = int(rng.integers(0, max_faces + 1))
    lo, hi = np.log(face_size[0] * size), np.log(face_size[1] * size)
    placed: list[tuple[float, float, float, float]] = []
    faces = []
    for _ in range(n):
        for _attempt in range(20):
            side = int(round(np.exp(rng.uniform(lo, hi))))
            x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            box = (float(x0), float(y0), float(x0 + side), float(y0 + side))
            if not overlaps_too_much(box, placed, max_cover):
                break
        else:
            continue
        name, ident = identities[int(rng.integers(len(identities)))]
        portrait = render_face(ident, rng, side)
        img.paste(portrait, (x0, y0), _feathered_ellipse(side))
        placed.append(box)
        faces.append((name, box))
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.8))))
    return img, faces


def make_face_scenes(
    root: str | Path,
    train_images: int = 600,
    val_images: int = 80,
    test_images: int = 150,
    image_size: int = 160,
    max_faces: int = 4,
    face_size: tuple[float, float] | list[float] = (0.15, 0.45),
    train_identities: int = 200,
    eval_identities: int = 40,
    gallery_images: int = 3,
    gallery_size: int = 64,
    distractors: int = 3,
    max_cover: float = 0.15,
    seed: int = 0,
) -> Path:
    """Write the face-scene set (see the module docstring).

    Args:
        root: output folder (replaced when it holds an incomplete or different set).
        train_images / val_images / test_images: scenes per split.
        image_size: scene side in pixels.
        max_faces: faces per scene, uniform in 0..max_faces.
        face_size: face side as a fraction of the scene side (log-uniform).
        train_identities: identities of the training scenes.
        eval_identities: identities of the val and test scenes (and of the gallery).
        gallery_images: enrolment portraits per val/test identity in ``gallery/``.
        gallery_size: their side in pixels.
        distractors: up to this many shapes per scene.
        max_cover: the most of a face another face may hide.
        seed: the set is a deterministic function of its parameters.

    Returns:
        the root path. Does nothing if a complete set with the same parameters exists.
    """
    root = Path(root)
    params = dict(
        kind="synthetic_face_scenes",
        train=train_images,
        val=val_images,
        test=test_images,
        size=image_size,
        max_faces=max_faces,
        face_size=list(face_size),
        train_ids=train_identities,
        eval_ids=eval_identities,
        gallery=gallery_images,
        gallery_size=gallery_size,
        distractors=distractors,
        cover=max_cover,
        seed=seed,
        version=1,
    )
    if is_complete(root, params):
        return root
    if train_identities < 1 or eval_identities < 2 or gallery_images < 1:
        raise ValueError(
            "data.generator: face scenes need train_identities >= 1, eval_identities >= 2 and "
            f"gallery_images >= 1, got {train_identities}, {eval_identities}, {gallery_images}"
        )
    if not 0 < face_size[0] <= face_size[1] <= 1:
        raise ValueError(f"data.generator.face_size={list(face_size)}: expected 0 < min <= max <= 1")
    if root.exists():
        shutil.rmtree(root)
    train_ids = [_identity(seed, i) for i in range(train_identities)]
    eval_ids = [_identity(seed, train_identities + i) for i in range(eval_identities)]
    rng = np.random.default_rng([seed, IDENTITY_STREAM])

    def scenes(n: int, identities):
        for _ in range(n):
            img, faces = face_scene(rng, identities, image_size, max_faces, tuple(face_size), distractors, max_cover)
            yield (
                img,
                [
                    {
                        "category_id": 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                        "identity": identity,
                    }
                    for identity, (x0, y0, x1, y1) in faces
                ],
            )

    ann_id = 1
    for split, n, identities in (
        ("train", train_images, train_ids),
        ("val", val_images, eval_ids),
        ("test", test_images, eval_ids),
    ):
        ann_id = write_coco_split(
            root,
            split,
            scenes(n, identities),
            image_size,
            [{"id": 1, "name": "face", "supercategory": "person"}],
            "mbtasks synthetic face scenes",
            ann_id,
        )
    for name, ident in eval_ids:
        folder = root / "gallery" / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, gallery_images + 1):
            render_face(ident, rng, gallery_size).save(folder / f"{name}_{k:04d}.png")
    mark_complete(root, params)
    return root
