"""The networks that ``mode=export`` writes, one per task: plain modules with fixed outputs.

Each takes normalised images ``(N, 3, H, W)`` float32 (``(pixels / 255 - mean) / std``, RGB, at the
checkpoint's input size) with a dynamic batch ``N``, and returns a tuple of tensors named by
``output_names``. What happens before (resize, normalise) and after (detection NMS) is described
in the export's metadata; detection's NMS ships as :mod:`mbtasks.export.postprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class ClassifierGraph(nn.Module):
    """``images -> (logits (N, K), probs (N, K))``."""

    output_names = ("logits", "probs")

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        return logits, logits.softmax(dim=1)


class DetectorGraph(nn.Module):
    """Raw SSD heads plus decoding: ``images -> (scores (N, A, K), boxes (N, A, 4))``.

    ``scores`` are softmax class probabilities without the background column (column ``k`` is
    class ``k`` of ``class_names``); ``boxes`` are the default boxes decoded with the box coder,
    ``x1y1x2y2`` in input pixels, clipped to the image. The default boxes depend only on the input
    size, so they are computed once here and stored as a constant. NMS is left out of the graph:
    :func:`mbtasks.export.postprocess.detections_from_outputs` does it (numpy only).
    """

    output_names = ("scores", "boxes")

    def __init__(self, detector: nn.Module, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.detector = detector
        self.image_size = (int(image_size[0]), int(image_size[1]))
        with torch.no_grad():
            out = detector(torch.zeros(1, 3, *self.image_size))
        self.register_buffer("anchors", out.anchors.detach().clone().float(), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls_logits, bbox_regression, _ = self.detector.head(self.detector.backbone(images))
        scores = cls_logits.softmax(dim=-1)[..., 1:]
        boxes = self.detector.box_coder.decode(bbox_regression, self.anchors)
        h, w = self.image_size
        # clamp each coordinate to the image (torchvision.ops.clip_boxes_to_image, export-friendly)
        limit = boxes.new_tensor([w, h, w, h])
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        return scores, boxes


class EmbeddingGraph(nn.Module):
    """``images -> (embeddings (N, D),)``, L2-normalised; with ``flip`` the image and its mirror
    are embedded, summed and re-normalised (the task's ``flip_tta``, as predict does)."""

    output_names = ("embeddings",)

    def __init__(self, model: nn.Module, flip: bool) -> None:
        super().__init__()
        self.model = model
        self.flip = bool(flip)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        e = self.model(images)
        if self.flip:
            e = F.normalize(e + self.model(torch.flip(images, dims=[-1])), dim=1)
        return (e,)


@dataclass
class ExportGraph:
    """A task's export network and what its metadata says about it."""

    module: nn.Module
    output_names: tuple[str, ...]
    details: dict


def export_graph(task) -> ExportGraph:
    """The export network of a loaded task (classification, detection or embedding), in eval mode.

    Raises:
        ValueError: a task this module does not know.
    """
    size = int(task.info.get("image_size", 224))
    if task.name == "classification":
        graph = ClassifierGraph(task.model)
        details = {"outputs": {"logits": "(N, K) class logits", "probs": "(N, K) softmax probabilities"}}
    elif task.name == "detection":
        det = task.model
        graph = DetectorGraph(det, (size, size))
        details = {
            "outputs": {"scores": "(N, A, K) class probabilities (softmax, background column dropped)",
                        "boxes": "(N, A, 4) x1y1x2y2 input pixels, decoded and clipped"},
            "num_anchors": int(graph.anchors.shape[0]),
            "postprocess": "mbtasks.export.postprocess.detections_from_outputs (per-class NMS, numpy)",
            "thresholds": {"score_threshold": float(det.score_threshold), "nms_iou": float(det.nms_iou),
                           "max_detections": int(det.max_detections), "topk_candidates": int(det.topk_candidates)},
            "category_ids": list(task.info.get("category_ids") or []),
        }
    elif task.name == "embedding":
        flip = bool(getattr(task, "flip_tta", False))
        graph = EmbeddingGraph(task.model, flip)
        details = {"outputs": {"embeddings": "(N, D) L2-normalised embeddings"}, "flip_tta": flip,
                   "thresholds": {"verification": float(getattr(task, "threshold", torch.tensor(1.0)))},
                   "distance": "squared L2: same identity when distance <= thresholds.verification"}
    else:
        raise ValueError(f"mode=export: no export graph for task {task.name!r}")
    return ExportGraph(graph.eval(), graph.output_names, details)
