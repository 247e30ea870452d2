"""The single-shot detector: backbone + SSD head + default boxes + post-processing.

Plain nn code, usable without Lightning::

    model = SSDDetector(MobileNetV1(0.5, out_indices=(3, 4)),
                        SSDHead([256, 512], num_classes=K + 1, anchors=DefaultBoxes()))
    out = model(images)                      # raw outputs (what profile/export count)
    detections = model.detect(images)        # list of {boxes, scores, labels} per image
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mbtasks.backbones.base import Backbone
from mbtasks.models.detection.box_coding import BoxCoder
from mbtasks.models.detection.postprocess import TOPK_CANDIDATES, decode, postprocess_detections
from mbtasks.models.detection.ssd_head import SSDHead


class SSDOutput(NamedTuple):
    """Raw detector outputs for a batch.

    Attributes:
        cls_logits: ``(N, A, K + 1)`` class logits, class 0 is background.
        bbox_regression: ``(N, A, 4)`` offsets from the default boxes (see :class:`BoxCoder`).
        anchors: ``(A, 4)`` default boxes, ``x1y1x2y2`` in input pixels.
    """

    cls_logits: torch.Tensor
    bbox_regression: torch.Tensor
    anchors: torch.Tensor


class SSDDetector(nn.Module):
    """Backbone + SSD/SSDLite head.

    Args:
        backbone: any backbone (its maps feed the head, finest first).
        head: the SSD head, sized from ``backbone.out_channels``.
        box_coder: offsets' parameterisation (weights 10, 10, 5, 5).
        score_threshold / nms_iou / max_detections / topk_candidates: see
            :func:`~mbtasks.models.detection.postprocess.postprocess_detections`.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: SSDHead,
        box_coder: BoxCoder | None = None,
        score_threshold: float = 0.01,
        nms_iou: float = 0.6,
        max_detections: int = 100,
        topk_candidates: int = TOPK_CANDIDATES,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.box_coder = box_coder or BoxCoder()
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.topk_candidates = topk_candidates

    def forward(self, images: torch.Tensor) -> SSDOutput:
        """``images (N, 3, H, W)`` -> :class:`SSDOutput`."""
        cls_logits, bbox_regression, grids = self.head(self.backbone(images))
        anchors = self.head.anchors(tuple(images.shape[-2:]), grids, images.device)
        return SSDOutput(cls_logits, bbox_regression, anchors.to(bbox_regression.dtype))

    def decode(self, output: SSDOutput, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities ``(N, A, K)`` and clipped boxes ``(N, A, 4)`` before NMS (what the export
        graph outputs): :func:`~mbtasks.models.detection.postprocess.decode`."""
        return decode(output.cls_logits, output.bbox_regression, output.anchors, self.box_coder, image_size)

    def postprocess(self, output: SSDOutput, image_size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """Detections per image in input pixels (``boxes`` x1y1x2y2, ``scores``, ``labels`` in [0, K))."""
        return postprocess_detections(
            output.cls_logits,
            output.bbox_regression,
            output.anchors,
            self.box_coder,
            image_size,
            self.score_threshold,
            self.nms_iou,
            self.max_detections,
            self.topk_candidates,
        )

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Forward + post-processing (call in eval mode)."""
        return self.postprocess(self(images), tuple(images.shape[-2:]))
