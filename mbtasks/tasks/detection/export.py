"""Detection's export: raw SSD heads plus decoding, per-class NMS end to end, mAP@0.5 for INT8."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mbtasks.errors import ConfigError
from mbtasks.export.postprocess import detections_from_outputs
from mbtasks.metrics.coco import CocoMeanAP
from mbtasks.models.detection.postprocess import to_original
from mbtasks.models.detection.ssd import SSDOutput
from mbtasks.tasks.spec import ExportGraph, TaskExport


class DetectorGraph(nn.Module):
    """Raw SSD heads plus decoding: ``images -> (scores (N, A, K), boxes (N, A, 4))``.

    ``scores`` are softmax class probabilities without the background column (column ``k`` is
    class ``k`` of ``class_names``); ``boxes`` are the default boxes decoded with the box coder,
    ``x1y1x2y2`` in input pixels, clipped to the image (:meth:`SSDDetector.decode`). The default
    boxes depend only on the input size, so they are computed once here and stored as a constant.
    NMS is left out of the graph: :func:`mbtasks.export.postprocess.detections_from_outputs` does
    it (numpy only).
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
        return self.detector.decode(SSDOutput(cls_logits, bbox_regression, self.anchors), self.image_size)


class DetectionExport(TaskExport):
    metric = "map_50"
    max_drop_key = "int8_max_drop_map50"
    max_drop = 0.01
    post_kind = "nms"

    def graph(self, task) -> ExportGraph:
        det = task.model
        size = int(task.info.get("image_size", 224))
        graph = DetectorGraph(det, (size, size)).eval()
        return ExportGraph(
            graph,
            graph.output_names,
            {
                "outputs": {
                    "scores": "(N, A, K) class probabilities (softmax, background column dropped)",
                    "boxes": "(N, A, 4) x1y1x2y2 input pixels, decoded and clipped",
                },
                "num_anchors": int(graph.anchors.shape[0]),
                "postprocess": "mbtasks.export.postprocess.detections_from_outputs (per-class NMS, numpy)",
                "thresholds": {
                    "score_threshold": float(det.score_threshold),
                    "nms_iou": float(det.nms_iou),
                    "max_detections": int(det.max_detections),
                    "topk_candidates": int(det.topk_candidates),
                },
                "category_ids": list(task.info.get("category_ids") or []),
            },
        )

    def post_settings(self, task, graph, score_threshold=None, nms_iou=None, max_detections=None, **overrides) -> dict:
        """The overrides go into ``task.model`` too, so the ``mode=predict`` reference uses the same ones."""
        det = task.model
        for key, value in (
            ("score_threshold", score_threshold),
            ("nms_iou", nms_iou),
            ("max_detections", max_detections),
        ):
            if value is not None:
                setattr(det, key, type(getattr(det, key))(value))
        if not 0 <= det.score_threshold < 1 or not 0 < det.nms_iou <= 1 or det.max_detections < 1:
            raise ConfigError(
                f"export: score_threshold={det.score_threshold} (expected [0, 1)), nms_iou={det.nms_iou} "
                f"(expected (0, 1]), max_detections={det.max_detections} (expected >= 1)"
            )
        return {
            "num_anchors": graph.details["num_anchors"],
            "num_classes": len(task.class_names),
            "category_ids": list(task.category_ids),
            "score_threshold": float(det.score_threshold),
            "nms_iou": float(det.nms_iou),
            "max_detections": int(det.max_detections),
            "topk_candidates": int(det.topk_candidates),
        }

    def e2e_details(self, post: dict) -> dict:
        d = post["max_detections"]
        return {
            "outputs": {
                "boxes": f"(N, {d}, 4) x1y1x2y2 in the input image's pixels",
                "scores": f"(N, {d}) decreasing",
                "labels": f"(N, {d}) int64 index into class_names, -1 = padding",
                "category_ids": f"(N, {d}) int64 original (COCO) category ids, -1 = padding",
                "num_detections": "(N,) int64 valid rows per image",
            },
            "thresholds": {k: post[k] for k in ("score_threshold", "nms_iou", "max_detections", "topk_candidates")},
            "optional_inputs": {"score_threshold": "float32 scalar", "iou_threshold": "float32 scalar"},
        }

    def reference(self, task, x: torch.Tensor, image: np.ndarray) -> dict:
        out = task.predict_step(x)
        ref = {k: v.numpy() for k, v in to_original(out, tuple(x.shape[-2:]), [image.shape[:2]])[0].items()}
        # original pixels per network-input pixel, x1 y1 x2 y2: box errors are judged in network pixels
        (h, w), (sh, sw) = image.shape[:2], x.shape[-2:]
        return {**ref, "pixel_scale": np.array([w / sw, h / sh, w / sw, h / sh], np.float64)}

    def compare(self, task, ref, got, atol, box_atol, fail) -> dict[str, float]:
        """Every detection of ``mode=predict`` is found in the export (same label and category id, box
        corners within ``box_atol`` pixels of the network input, score within ``atol``) and vice versa,
        except those whose score is within ``atol`` of a cut-off (the score threshold, or the last kept
        score when ``max_detections`` are kept), which a tiny numerical difference may legitimately flip.

        Box errors are measured in network-input pixels (the original-pixel error divided by the
        image's scale): the network sees that grid, so one tolerance fits a 100 px and a 4000 px photo.
        Returns ``{"boxes": network pixels, "scores": ...}``, the largest differences matched."""
        det = task.model
        score_threshold, max_detections = float(det.score_threshold), int(det.max_detections)
        n = int(got["num_detections"])
        gb, gs, gl, gi = got["boxes"][:n], got["scores"][:n], got["labels"][:n], got["category_ids"][:n]
        if n and (gi != np.asarray(task.category_ids)[gl]).any():
            fail("category ids do not match the labels:", f"{gi.tolist()} for labels {gl.tolist()}")
        cut_ref = ref["scores"].min() if len(ref["scores"]) >= max_detections else score_threshold
        cut_got = gs.min() if n >= max_detections else score_threshold
        used = np.zeros(n, bool)
        box_diff = score_diff = 0.0
        for box, score, label in zip(ref["boxes"], ref["scores"], ref["labels"], strict=True):
            err = (np.abs(gb - box) / ref["pixel_scale"]).max(axis=1) if n else np.zeros(0)
            ok = ~used & (gl == label) & (np.abs(gs - score) <= atol) & (err <= box_atol)
            if ok.any():
                j = int(np.flatnonzero(ok)[np.argmin(err[ok])])
                used[j] = True
                box_diff, score_diff = max(box_diff, float(err[j])), max(score_diff, float(abs(gs[j] - score)))
            elif score > max(cut_ref, cut_got) + atol:
                near = err[gl == label].min() if (gl == label).any() else float("nan")
                fail(
                    "misses mode=predict's detection",
                    f"label {int(label)} score {score:.4f} box "
                    f"{np.round(box, 2).tolist()} (nearest export box of that label {near:.3g} network-input "
                    f"pixels off; export.box_atol={box_atol} network-input pixels, export.e2e_atol={atol})",
                )
        extra = gs[~used]
        if extra.size and extra.max() > max(cut_ref, cut_got) + atol:
            j = int(np.flatnonzero(~used)[np.argmax(extra)])
            fail(
                "has a detection mode=predict does not:",
                f"label {int(gl[j])} score {gs[j]:.4f} box {np.round(gb[j], 2).tolist()}",
            )
        return {"boxes": box_diff, "scores": score_diff}

    def counted(self, ref) -> dict[str, int]:
        return {"detections": len(ref["scores"])}

    def evaluate(self, task, datamodule, runner, batches) -> float:
        """COCO mAP@0.5 (:class:`~mbtasks.metrics.coco.CocoMeanAP`) through the shipped numpy NMS."""
        det = task.model
        metric = CocoMeanAP()
        for images, targets in batches:
            scores, boxes = runner(images.numpy())
            dets = detections_from_outputs(
                scores,
                boxes,
                float(det.score_threshold),
                float(det.nms_iou),
                int(det.max_detections),
                int(det.topk_candidates),
            )
            dets = [{k: torch.from_numpy(v) for k, v in d.items()} for d in dets]
            metric.update(to_original(dets, tuple(images.shape[-2:]), [t["orig_size"] for t in targets]), targets)
        return float(metric.compute()["map_50"])
