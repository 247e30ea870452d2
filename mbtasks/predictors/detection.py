"""Detection predictions: COCO-results JSON in original pixels, and copies of the images with
their boxes drawn (``drawn/``)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torchvision.ops import box_convert

from mbtasks.data.io import ImageReadError
from mbtasks.modes.common import write_json_atomic
from mbtasks.predictors.model import Predictor

log = logging.getLogger(__name__)


def image_id_for(path: Path, index: int) -> int:
    """COCO file names encode the image id (``000000397133.jpg`` -> 397133); others get ``index``."""
    return int(path.stem) if path.stem.isdigit() else index


def predict(model: Predictor, cfg: DictConfig, files: list[Path], run_dir: Path) -> dict:
    """Write ``run_dir/detections.json`` and ``run_dir/drawn/<image>``.

    ``detections.json`` is a COCO results list (loadable by ``pycocotools.COCO.loadRes``)
    whose entries also name the file and class::

        {"image_id", "file_name", "category_id" (original id), "category_name",
         "bbox": [x, y, w, h] original pixels, "score"}

    All detections above the checkpoint's ``score_threshold`` go to the JSON; the drawn
    images show those above ``predict.score_threshold``.
    """
    import torch

    category_ids = model.task.category_ids
    draw_threshold = float(OmegaConf.select(cfg, "predict.score_threshold", default=0.3))
    drawn_dir = run_dir / "drawn"
    drawn_dir.mkdir(parents=True, exist_ok=True)
    results, skipped, used_names = [], {}, set()
    index = 0
    for det in model._detect(files, skipped):
        index += 1
        path = Path(det.source)
        image_id = image_id_for(path, index)
        xywh = box_convert(torch.from_numpy(det.boxes).reshape(-1, 4), "xyxy", "xywh").tolist()
        for box, score, label, name in zip(xywh, det.scores.tolist(), det.labels.tolist(), det.names, strict=True):
            results.append({"image_id": image_id, "file_name": str(path), "category_id": category_ids[label],
                            "category_name": name, "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
        out_name = path.name if path.name not in used_names else f"{index:05d}_{path.name}"
        used_names.add(out_name)
        try:
            det.save(drawn_dir / out_name, draw_threshold)
        except (ImageReadError, OSError) as err:
            log.warning("could not draw %s: %s", path, err)
    write_json_atomic(run_dir / "detections.json", results)
    for path, reason in skipped.items():
        log.warning("skipped %s: %s", path, reason)
    log.info("wrote %d detections for %d images to %s (drawn images in %s)", len(results), index,
             run_dir / "detections.json", drawn_dir)
    return {"detections": results, "skipped": skipped, "images": index}
