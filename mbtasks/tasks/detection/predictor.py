"""Detection predictions: boxes in original pixels (``predictions.json``, COCO results) and the images
with their boxes drawn (``drawn/``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mbtasks.atomic_files import unique_name, write_json_atomic
from mbtasks.data.image_files import ImageReadError
from mbtasks.inference import Predictor
from mbtasks.metrics.coco import results_to_coco
from mbtasks.models.detection.postprocess import to_original
from mbtasks.results import Detections

log = logging.getLogger(__name__)


def image_id_for(path: Path, index: int) -> int:
    """COCO file names encode the image id (``000000397133.jpg`` -> 397133); others get ``index``."""
    return int(path.stem) if path.stem.isdigit() else index


class DetectionPredictor(Predictor):
    """A detection checkpoint: :meth:`predict` gives each image's boxes in its own pixels."""

    def predict(self, inputs: Any, skipped: dict[str, str] | None = None) -> list[Detections]:
        """One :class:`~mbtasks.results.Detections` (``boxes`` xyxy original pixels, ``scores``, ``labels``,
        ``names``; ``draw()`` / ``save()``) per readable image, in input order.

        Args:
            inputs: any image input (see :meth:`mbtasks.inference.Predictor.batches`).
            skipped: collects unreadable files (name -> reason); without it they raise :class:`DataError`.
        """
        return list(self.detect(inputs, skipped))

    def detect(self, inputs: Any, skipped: dict[str, str] | None = None) -> Iterator[Detections]:
        """:meth:`predict`, one image at a time."""
        names = self.class_names
        for sources, sizes, batch in self.batches(inputs, skipped):
            detections = to_original(self.forward(batch), tuple(batch.shape[-2:]), sizes)
            for source, det in zip(sources, detections, strict=True):
                labels = det["labels"].cpu().numpy().astype(np.int64)
                yield Detections(
                    source.name,
                    det["boxes"].float().cpu().numpy(),
                    det["scores"].float().cpu().numpy(),
                    labels,
                    [names[i] for i in labels],
                    source.pixels,
                )

    def write(self, cfg: DictConfig, files: list[Path], run_dir: Path) -> dict:
        """Write ``run_dir/predictions.json`` and ``run_dir/drawn/<image>``.

        ``predictions.json`` is a COCO results list (loadable by ``pycocotools.COCO.loadRes``)
        whose entries also name the file and class::

            {"image_id", "file_name", "category_id" (original id), "category_name",
             "bbox": [x, y, w, h] original pixels, "score"}

        All detections above the checkpoint's ``score_threshold`` go to the JSON; the drawn
        images show those above ``predict.score_threshold``.
        """
        category_ids = self.task.category_ids
        draw_threshold = float(OmegaConf.select(cfg, "predict.score_threshold", default=0.3))
        drawn_dir = run_dir / "drawn"
        drawn_dir.mkdir(parents=True, exist_ok=True)
        results, skipped, used_names = [], {}, set()
        index = 0
        for det in self.detect(files, skipped):
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
