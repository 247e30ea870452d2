"""Detection predictions: COCO-results JSON in original pixels, and copies of the images with
their boxes drawn (``drawn/``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torchvision.ops import box_convert
from torchvision.utils import draw_bounding_boxes

from mbtasks.data.io import ImageReadError, read_rgb
from mbtasks.modes.common import write_json_atomic
from mbtasks.predictors.common import device_of, iter_batches
from mbtasks.tasks.detection import to_original

log = logging.getLogger(__name__)

# Box colours by class index (cycled).
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075"]


def image_id_for(path: Path, index: int) -> int:
    """COCO file names encode the image id (``000000397133.jpg`` -> 397133); others get ``index``."""
    return int(path.stem) if path.stem.isdigit() else index


def draw_detections(path: Path, det: dict[str, torch.Tensor], names: list[str], threshold: float) -> Image.Image:
    """The image at ``path`` with detections scoring >= ``threshold`` drawn and labelled."""
    image = torch.from_numpy(read_rgb(path)).permute(2, 0, 1)
    keep = det["scores"] >= threshold
    labels = det["labels"][keep].tolist()
    text = [f"{names[c]} {s:.2f}" for c, s in zip(labels, det["scores"][keep].tolist(), strict=True)]
    width = max(1, round(max(image.shape[1:]) / 320))
    drawn = draw_bounding_boxes(image, det["boxes"][keep], labels=text, colors=[PALETTE[c % len(PALETTE)] for c in labels],
                                width=width, fill_labels=True)
    return Image.fromarray(drawn.permute(1, 2, 0).numpy())


@torch.no_grad()
def predict(task, train_cfg: DictConfig, cfg: DictConfig, files: list[Path], run_dir: Path) -> dict:
    """Write ``run_dir/detections.json`` and ``run_dir/drawn/<image>``.

    ``detections.json`` is a COCO results list (loadable by ``pycocotools.COCO.loadRes``)
    whose entries also name the file and class::

        {"image_id", "file_name", "category_id" (original id), "category_name",
         "bbox": [x, y, w, h] original pixels, "score"}

    All detections above the checkpoint's ``score_threshold`` go to the JSON; the drawn
    images show those above ``predict.score_threshold``.
    """
    device = device_of(task)
    names, category_ids = task.class_names, task.category_ids
    draw_threshold = float(OmegaConf.select(cfg, "predict.score_threshold", default=0.3))
    drawn_dir = run_dir / "drawn"
    drawn_dir.mkdir(parents=True, exist_ok=True)
    results, skipped, used_names = [], {}, set()
    index = 0
    for paths, sizes, batch in iter_batches(files, train_cfg, int(cfg.predict.batch_size), skipped):
        detections = to_original(task.predict_step(batch.to(device)), tuple(batch.shape[-2:]), sizes)
        for path, det in zip(paths, detections, strict=True):
            index += 1
            det = {k: v.cpu() for k, v in det.items()}
            image_id = image_id_for(path, index)
            xywh = box_convert(det["boxes"], "xyxy", "xywh").tolist()
            for box, score, label in zip(xywh, det["scores"].tolist(), det["labels"].tolist(), strict=True):
                results.append({"image_id": image_id, "file_name": str(path), "category_id": category_ids[label],
                                "category_name": names[label], "bbox": [round(v, 2) for v in box],
                                "score": round(score, 5)})
            out_name = path.name if path.name not in used_names else f"{index:05d}_{path.name}"
            used_names.add(out_name)
            try:
                draw_detections(path, det, names, draw_threshold).save(drawn_dir / out_name)
            except (ImageReadError, OSError) as err:
                log.warning("could not draw %s: %s", path, err)
    write_json_atomic(run_dir / "detections.json", results)
    for path, reason in skipped.items():
        log.warning("skipped %s: %s", path, reason)
    log.info("wrote %d detections for %d images to %s (drawn images in %s)", len(results), index,
             run_dir / "detections.json", drawn_dir)
    return {"detections": results, "skipped": skipped, "images": index}
