"""The detect-then-embed chain measured on a COCO json whose annotations carry an ``identity`` (the
synthetic face scenes): used by ``benchmarks/face_pipeline.py`` and the tests, not by ``mode=predict``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from mbtasks.data.image_files import read_rgb
from mbtasks.errors import DataError
from mbtasks.tasks.embedding.identify import Pipeline
from mbtasks.tasks.embedding.predictor import Gallery


def evaluate_on_coco(
    pipeline: Pipeline,
    annotations: str | Path,
    images: str | Path,
    gallery: str | Path | dict | Gallery,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Measure the chain on a COCO json whose annotations carry an ``identity`` (the synthetic face scenes).

    Every ground-truth box is matched one-to-one to the highest-scoring kept detection with
    IoU >= ``iou_threshold``. Identification is closed-set (the nearest gallery identity must be
    the true one) and, stricter, at the pipeline's 1:N threshold (also accepted as known).

    Returns:
        ``faces``, ``detection_recall``, ``chain_accuracy`` (correct identities among all
        ground-truth faces; a missed face counts as wrong), ``chain_accuracy_at_threshold``,
        ``gt_crop_accuracy`` / ``gt_crop_accuracy_at_threshold`` (the embedder on the ground-truth
        boxes, cropped the same way: what a perfect detector would give), ``false_detections``.
    """
    coco = json.loads(Path(annotations).read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if "identity" not in ann:
            raise DataError(
                f"{annotations}: annotation {ann.get('id')} has no 'identity' (expected the synthetic "
                "face scenes' json)"
            )
        by_image.setdefault(ann["image_id"], []).append(ann)
    gallery = pipeline.embedder.gallery(gallery)
    n = detected = chain = chain_thr = crop = crop_thr = false = 0
    for info in coco["images"]:
        path = Path(images) / info["file_name"]
        anns = by_image.get(info["id"], [])
        gt = np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            np.float32,
        ).reshape(-1, 4)
        truth = [a["identity"] for a in anns]
        photo = pipeline.identify([path], gallery)[0]
        image = read_rgb(path)
        on_gt = pipeline.embed_boxes(image, gt, np.ones(len(gt)), gallery)
        crop += sum(f.nearest == t for f, t in zip(on_gt, truth, strict=True))
        crop_thr += sum(f.match and f.nearest == t for f, t in zip(on_gt, truth, strict=True))
        n += len(gt)
        faces = sorted(photo.faces, key=lambda f: -f.score)
        if not faces:
            continue
        iou = (
            box_iou(torch.tensor([f.box for f in faces]), torch.from_numpy(gt))
            if len(gt)
            else torch.zeros(len(faces), 0)
        )
        taken: set[int] = set()
        for i, face in enumerate(faces):
            row = iou[i].clone()
            if taken:
                row[list(taken)] = -1
            j = int(row.argmax()) if len(row) else -1
            if j < 0 or row[j] < iou_threshold:
                false += 1
                continue
            taken.add(j)
            detected += 1
            chain += face.nearest == truth[j]
            chain_thr += face.match and face.nearest == truth[j]
    n = max(n, 1)
    return {
        "faces": float(n),
        "detection_recall": detected / n,
        "chain_accuracy": chain / n,
        "chain_accuracy_at_threshold": chain_thr / n,
        "gt_crop_accuracy": crop / n,
        "gt_crop_accuracy_at_threshold": crop_thr / n,
        "false_detections": float(false),
    }
