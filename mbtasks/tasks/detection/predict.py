"""Detection's side of ``mode=predict``: ``predictions.json`` (COCO results) and the images with their
boxes drawn (``drawn/``, those scoring >= the shared ``predict.score_threshold``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mbtasks.atomic_files import unique_name, write_json_atomic
from mbtasks.data.image_files import ImageReadError
from mbtasks.inference.settings import PredictSettings
from mbtasks.metrics.coco import results_to_coco
from mbtasks.tasks.detection.predictor import DetectionPredictor

log = logging.getLogger(__name__)


def image_id_for(path: Path, index: int) -> int:
    """COCO file names encode the image id (``000000397133.jpg`` -> 397133); others get ``index``."""
    return int(path.stem) if path.stem.isdigit() else index


def write_predictions(model: DetectionPredictor, files: list[Path], settings: PredictSettings, run_dir: Path) -> dict:
    """Write ``run_dir/predictions.json`` and ``run_dir/drawn/<image>``.

    ``predictions.json`` is a COCO results list (loadable by ``pycocotools.COCO.loadRes``)
    whose entries also name the file and class::

        {"image_id", "file_name", "category_id" (original id), "category_name",
         "bbox": [x, y, w, h] original pixels, "score"}

    All detections above the checkpoint's ``score_threshold`` go to the JSON; the drawn
    images show those above ``predict.score_threshold``.
    """
    category_ids = model.task.category_ids
    draw_threshold = float(settings.score_threshold)
    drawn_dir = run_dir / "drawn"
    drawn_dir.mkdir(parents=True, exist_ok=True)
    results, skipped, used_names = [], {}, set()
    index = 0
    for det in model.detect(files, skipped):
        index += 1
        path = Path(det.source)
        entries = results_to_coco(
            image_id_for(path, index),
            torch.from_numpy(det.boxes).reshape(-1, 4),
            torch.from_numpy(det.scores),
            [category_ids[label] for label in det.labels],
        )
        results += [
            {**entry, "file_name": str(path), "category_name": name}
            for entry, name in zip(entries, det.names, strict=True)
        ]
        try:
            det.save(drawn_dir / unique_name(used_names, path.name, index), draw_threshold)
        except (ImageReadError, OSError) as err:
            log.warning("could not draw %s: %s", path, err)
    write_json_atomic(run_dir / "predictions.json", results)
    for path, reason in skipped.items():
        log.warning("skipped %s: %s", path, reason)
    log.info(
        "wrote %d detections for %d images to %s (drawn images in %s)",
        len(results),
        index,
        run_dir / "predictions.json",
        drawn_dir,
    )
    return {"detections": results, "skipped": skipped, "images": index}
