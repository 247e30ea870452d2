"""Object detection: SSD / SSDLite on a MobileNet backbone, COCO mAP through pycocotools
(and WIDER FACE's AP on face data, :mod:`mbtasks.metrics.wider`).

The LightningModule stays thin: the detector, its loss and post-processing are plain nn
code in ``mbtasks.models.detection``; this file wires them to batches, logs and metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mbtasks.backbones.base import Backbone
from mbtasks.data.transforms import denormalize
from mbtasks.metrics.coco import STAT_NAMES, CocoMeanAP, defined
from mbtasks.metrics.wider import wider_stats
from mbtasks.models.detection.box_coding import BoxCoder
from mbtasks.models.detection.loss import SSDLoss
from mbtasks.models.detection.postprocess import TOPK_CANDIDATES, to_original
from mbtasks.models.detection.ssd import SSDDetector
from mbtasks.tasks import health
from mbtasks.tasks.base import BaseTask, TaskFigure
from mbtasks.tasks.detection import figures
from mbtasks.tasks.detection import health as detection_health
from mbtasks.tasks.detection.spec import SPEC

log = logging.getLogger(__name__)


class DetectionTask(BaseTask):
    """SSD-style detector trained with the SSD loss, evaluated with COCO mAP (and WIDER-style AP
    when the data module's ``eval_wider`` asks for it: the dlib_xml and wider_face data).

    Args:
        backbone: any :class:`Backbone`; its maps (finest first) feed the head.
        head: partial :class:`~mbtasks.models.detection.ssd_head.SSDHead` (with its default boxes),
            completed with ``in_channels``, ``num_classes`` (K + 1) and the backbone's ``width``.
        info: data info: ``class_names``, ``category_ids`` (original ids), ``image_size``, ``mean``, ``std``.
        iou_threshold: matching IoU (0.5).
        neg_pos_ratio: hard-negative mining ratio (3).
        min_negatives: negatives per image kept even without positives.
        box_weights: box-coding weights (10, 10, 5, 5).
        score_threshold / nms_iou / max_detections / topk_candidates: post-processing.
        log_images: validation images drawn with boxes into TensorBoard (0 disables).
        training: ``optimizer``, ``scheduler``, ``finetune``, ``no_decay`` (see :class:`BaseTask`).
    """

    spec = SPEC
    monitor = "val/map"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: Backbone,
        head: Callable[..., nn.Module],
        info: dict,
        iou_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        min_negatives: int = 0,
        box_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        score_threshold: float = 0.01,
        nms_iou: float = 0.6,
        max_detections: int = 100,
        topk_candidates: int = TOPK_CANDIDATES,
        log_images: int = 8,
        **training: Any,
    ) -> None:
        super().__init__(info, **training)
        self.class_names = list(info["class_names"])
        if not self.class_names:
            raise ValueError("detection needs at least one class; the data has none")
        self.category_ids = [int(i) for i in info.get("category_ids") or range(1, len(self.class_names) + 1)]
        box_coder = BoxCoder(box_weights)
        head_module = head(
            in_channels=list(backbone.out_channels), num_classes=len(self.class_names) + 1, width=float(backbone.width)
        )
        self.model = SSDDetector(
            backbone, head_module, box_coder, score_threshold, nms_iou, max_detections, topk_candidates
        )
        self.criterion = SSDLoss(box_coder, iou_threshold, neg_pos_ratio, min_negatives)
        self.val_map = CocoMeanAP()
        self.test_map = CocoMeanAP()
        self.log_images = log_images
        self._sample: tuple | None = None
        self._wider_warned = False

    def model_step(self, batch):
        images, targets = batch
        out = self.model(images)
        losses = self.criterion(out.cls_logits, out.bbox_regression, out.anchors, targets)
        return out, losses

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        return self.model_step(batch)[1]

    def _eval_step(self, batch, stage: str, metric: CocoMeanAP) -> list[dict[str, torch.Tensor]]:
        images, targets = batch
        out, losses = self.model_step(batch)
        self.log(f"{stage}/loss", losses["loss"], prog_bar=stage == "val", batch_size=images.shape[0], sync_dist=True)
        size = tuple(images.shape[-2:])
        detections = self.model.postprocess(out, size)
        metric.update(to_original(detections, size, [t["orig_size"] for t in targets]), targets)
        return detections

    def validation_step(self, batch, batch_idx: int) -> None:
        detections = self._eval_step(batch, "val", self.val_map)
        if batch_idx == 0 and self.log_images:
            n = self.log_images
            images, targets = batch
            self._sample = (
                images[:n].detach().cpu(),
                [t["boxes"] for t in targets[:n]],
                [{k: v.detach().cpu() for k, v in d.items()} for d in detections[:n]],
            )

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_map)

    def _log_map(self, stage: str, metric: CocoMeanAP) -> None:
        stats = metric.compute()
        for k in STAT_NAMES:
            # pycocotools' -1 (no objects of that size) is logged as NaN: null in metrics.json, no plot panel
            self.log(f"{stage}/{k}", defined(float(stats[k])), prog_bar=k in ("map", "map_50"))
        rows = [r.numpy() for r in metric.rows] if metric.rows is not None else None
        if rows is not None:
            # every rank holds all ranks' rows after compute(), so each logs the same numbers
            for k, v in self.wider_aps(stage, rows).items():
                self.log(f"{stage}/{k}", v)
        if stage == "val" and rows is not None and not self.trainer.sanity_checking:
            self.set_health(detection_health.check(*rows, float(stats["map_50"]), health.facts_of(self)))
        metric.rows = None
        metric.reset()

    def wider_aps(self, stage: str, rows: list) -> dict[str, float]:
        """WIDER-style APs of the ``face`` class (:func:`~mbtasks.metrics.wider.wider_stats`) when the
        data module asks for them (``eval_wider``: the dlib_xml and wider_face data), else nothing.
        The official easy / medium / hard come with the data module's ``wider_ground_truth``."""
        data = self.trainer.datamodule
        if not getattr(data, "eval_wider", False):
            return {}
        names = self.class_names
        label = names.index("face") if "face" in names else 0 if len(names) == 1 else None
        if label is None:
            if not self._wider_warned:
                self._wider_warned = True
                log.warning(
                    "data.eval_wider: WIDER-style AP is for one class, and none of %s is named 'face'; "
                    "not computed (set data.eval_wider=false to silence this)",
                    names,
                )
            return {}
        official = getattr(data, "wider_ground_truth", None)
        keys = data.wider_keys("val" if stage == "val" else data.test_split) if official is not None else None
        return wider_stats(*rows, label, official, keys)

    def on_validation_epoch_end(self) -> None:
        self._log_map("val", self.val_map)
        self.val_sample, self._sample = (None if self.trainer.sanity_checking else self._sample), None

    def on_test_epoch_end(self) -> None:
        self._log_map("test", self.test_map)

    def predict_step(self, batch, batch_idx: int = 0) -> list[dict[str, torch.Tensor]]:
        """Detections in network-input pixels: per image ``boxes`` x1y1x2y2, ``scores``, ``labels`` in [0, K)."""
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self.model.detect(images)

    def figures(self, stage: str, sample: tuple | None = None) -> list[TaskFigure]:
        """``val``: the first validation images with their boxes (TensorBoard) and ``val_predictions.png``;
        ``test``: ``pr_curve.png`` (pycocotools' precision arrays, per class and overall) and
        ``test_predictions.png``. The PNGs draw ``sample`` with the predictions of the model as it is now."""
        out = []
        if stage == "val" and getattr(self, "val_sample", None) is not None:
            images, boxes, detections = self.val_sample
            out.append(TaskFigure(figures.draw_boxes, self._drawn(images, boxes, detections), tag="val/detections"))
        if stage == "test" and "precision" in (curves := self.test_map.curves or {}):
            data = {"precision": curves["precision"], "category_ids": curves["category_ids"], "names": self.class_names}
            out.append(TaskFigure(figures.pr_curve, data, file="pr_curve.png"))
        if sample is not None:
            images, targets = sample
            detections = [{k: v.cpu() for k, v in d.items()} for d in self.predict_step(images)]
            data = self._drawn(images, [t["boxes"] for t in targets], detections)
            out.append(TaskFigure(figures.prediction_grid, data, file=f"{stage}_predictions.png"))
        return out

    def _drawn(self, images: torch.Tensor, boxes: list[torch.Tensor], detections: list[dict]) -> dict:
        """The arguments of the box drawings: pixels in [0, 1], boxes and detections on the CPU, class names."""
        pixels = denormalize(images.detach().float().cpu(), self.info["mean"], self.info["std"])
        return {
            "images": pixels,
            "true_boxes": [b.cpu() for b in boxes],
            "detections": detections,
            "names": self.class_names,
        }
