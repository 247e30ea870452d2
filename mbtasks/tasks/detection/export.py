"""Detection's export: raw SSD heads plus decoding, per-class NMS end to end, mAP@0.5 for INT8.

The end-to-end tail (ONNX and TorchScript) gives ``boxes (N, D, 4), scores (N, D), labels (N, D),
category_ids (N, D), num_detections (N,)``: the best ``topk_candidates`` (box, class) pairs, per-class
NMS with the score threshold, the best ``D = max_detections`` over all classes, boxes scaled to the
input image's pixels, rows past ``num_detections`` padded (boxes 0, scores 0, labels and ids -1).
``score_threshold`` and ``iou_threshold`` stay optional inputs of the file (float32 scalars; ONNX graph
inputs, TorchScript ``forward(pixels, score_threshold=None, iou_threshold=None)``) whose defaults are
the checkpoint's values (or the ``export.*`` overrides). The TorchScript file runs
:func:`torchvision.ops.batched_nms`, so it needs torchvision's ops library where it is loaded
(``import torchvision`` in Python, ``libtorchvision`` in C++).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from mbtasks.errors import ConfigError
from mbtasks.export.postprocess import detections_from_outputs
from mbtasks.export.settings import TaskExportOptions, max_drop_setting
from mbtasks.export.torch_pipeline import EndToEnd
from mbtasks.metrics.coco import CocoMeanAP
from mbtasks.models.detection.postprocess import to_original
from mbtasks.models.detection.ssd import SSDOutput
from mbtasks.settings import setting
from mbtasks.tasks.spec import ExportGraph, TaskExport


@dataclass(frozen=True, kw_only=True)
class DetectionExportOptions(TaskExportOptions):
    """Detection's ``export.*`` keys (``conf/task/export/detection.yaml``); null thresholds: the checkpoint's."""

    score_threshold: float | None = setting(low=0, high=1, optional=True, example="0.01")
    nms_iou: float | None = setting(low=0, low_in=False, high=1, optional=True, example="0.6")
    max_detections: int | None = setting(integer=True, low=1, optional=True, example="100")
    box_atol: float = setting(low=0, low_in=False, example="1.0")
    int8_max_drop_map50: float = max_drop_setting()


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


class DetectionTail(nn.Module):
    """``(scores (N, A, K), boxes (N, A, 4))`` -> ``(boxes, scores, labels, category_ids, num_detections)``
    padded to ``max_detections`` rows (as :func:`mbtasks.models.detection.postprocess.postprocess_detections`
    selects them, boxes scaled to the input image)."""

    def __init__(
        self,
        size: int,
        category_ids: list[int],
        score_threshold: float,
        nms_iou: float,
        max_detections: int,
        topk_candidates: int,
    ) -> None:
        super().__init__()
        self.size = int(size)
        self.register_buffer("category_ids", torch.tensor(category_ids, dtype=torch.int64))
        self.score_threshold, self.nms_iou = float(score_threshold), float(nms_iou)
        self.max_detections, self.topk_candidates = int(max_detections), int(topk_candidates)

    def forward(
        self,
        outputs: tuple[Tensor, Tensor],
        pixels: Tensor,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        scores_all, boxes_all = outputs
        h, w = pixels.shape[1], pixels.shape[2]
        thr = self.score_threshold if score_threshold is None else score_threshold
        iou = self.nms_iou if iou_threshold is None else iou_threshold
        n, k, d = scores_all.shape[0], scores_all.shape[2], self.max_detections
        out_boxes = torch.zeros(n, d, 4)
        out_scores = torch.zeros(n, d)
        out_labels = torch.full((n, d), -1, dtype=torch.int64)
        out_ids = torch.full((n, d), -1, dtype=torch.int64)
        counts = torch.zeros(n, dtype=torch.int64)
        scale = torch.tensor([w / self.size, h / self.size, w / self.size, h / self.size])
        for i in range(n):
            flat = scores_all[i].flatten()
            keep = torch.nonzero(flat > thr).squeeze(1)
            if keep.numel() > self.topk_candidates:
                keep = keep[flat[keep].topk(self.topk_candidates).indices]
            labels = keep % k
            boxes, scores = boxes_all[i][torch.div(keep, k, rounding_mode="floor")], flat[keep]
            kept = batched_nms(boxes, scores, labels, iou)[:d]
            m = kept.numel()
            out_boxes[i, :m] = boxes[kept] * scale
            out_scores[i, :m] = scores[kept]
            out_labels[i, :m] = labels[kept]
            out_ids[i, :m] = self.category_ids[labels[kept]]
            counts[i] = m
        return out_boxes, out_scores, out_labels, out_ids, counts


class DetectionEndToEnd(EndToEnd):
    """The end-to-end module with the thresholds as optional inputs (``None``: the file's defaults)."""

    def forward(self, pixels: Tensor, score_threshold: float | None = None, iou_threshold: float | None = None):
        return self.tail(self.network(self.pre(pixels)), pixels, score_threshold, iou_threshold)


class DetectionExport(TaskExport):
    metric: ClassVar[str] = "map_50"
    diff_units: ClassVar[dict[str, str]] = {"boxes": "network-input pixels"}
    tolerance_units: ClassVar[dict[str, str]] = {"box_atol": "network-input pixels"}
    # the box-regression and score convolutions stay float (as ultralytics' INT8 export keeps its head's):
    # int8 there cost fruits_voc 0.040 mAP@0.5, float 0.019 (docs/deploy.md "INT8")
    int8_keep_float: ClassVar[tuple[str, ...]] = ("output_layers",)

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

    def post_settings(self, task, graph, options: DetectionExportOptions) -> dict:
        """The overrides go into ``task.model`` too, so the ``mode=predict`` reference uses the same ones."""
        det = task.model
        for key, value in (
            ("score_threshold", options.score_threshold),
            ("nms_iou", options.nms_iou),
            ("max_detections", options.max_detections),
        ):
            if value is not None:
                setattr(det, key, type(getattr(det, key))(value))
        if not 0 <= det.score_threshold < 1 or not 0 < det.nms_iou <= 1 or det.max_detections < 1:
            raise ConfigError(
                f"export: score_threshold={det.score_threshold} (expected [0, 1)), nms_iou={det.nms_iou} "
                f"(expected (0, 1]), max_detections={det.max_detections} (expected >= 1)"
            )
        return {
            "size": int(task.info.get("image_size", 224)),
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

    def onnx_tail(self, g, post: dict) -> None:
        """Network outputs ``scores (N, A, K)``, ``boxes (N, A, 4)`` (network pixels) -> final detections.

        Same rules as :func:`mbtasks.models.detection.postprocess.postprocess_detections`: only the best
        ``topk_candidates`` (box, class) pairs scoring above the threshold enter the per-class NMS.
        """
        # the final outputs take the names scores / boxes: the network's become net/scores, net/boxes
        net_scores, net_boxes = g.network_output("scores"), g.network_output("boxes")
        score_threshold = g.scalar_input("score_threshold", post["score_threshold"])
        iou_threshold = g.scalar_input("iou_threshold", post["nms_iou"])
        a, k = int(post["num_anchors"]), int(post["num_classes"])
        flat = g.op("Reshape", net_scores, g.const([0, a * k], np.int64))
        top_vals, top_idx = g.op(
            "TopK", flat, g.const([min(int(post["topk_candidates"]), a * k)], np.int64), axis=1, n_out=2
        )
        # pairs outside the top candidates get score 0 (never above a threshold >= 0)
        cand = g.op("ScatterElements", g.op("Mul", flat, g.const(0.0, np.float32)), top_idx, top_vals, axis=1)
        cand = g.op("Transpose", g.op("Reshape", cand, g.const([0, a, k], np.int64)), perm=[0, 2, 1])  # (N, K, A)
        d = min(int(post["max_detections"]), a * k)
        selected = g.op(
            "NonMaxSuppression",
            net_boxes,
            cand,
            g.const([d], np.int64),
            iou_threshold,
            score_threshold,
            center_point_box=0,
        )  # (M, 3): image, class, anchor
        # scatter the kept scores into a dense (N, K * A) map (-1 elsewhere), take the best D per image
        dense = g.op("Add", g.op("Mul", cand, g.const(0.0, np.float32)), g.const(-1.0, np.float32))
        dense = g.op("ScatterND", dense, selected, g.op("GatherND", cand, selected))
        best, idx = g.op(
            "TopK", g.op("Reshape", dense, g.const([0, k * a], np.int64)), g.const([d], np.int64), axis=1, n_out=2
        )
        valid = g.op("Greater", best, g.const(-0.5, np.float32))
        labels = g.op("Div", idx, g.const(a, np.int64))
        anchor = g.op("Mod", idx, g.const(a, np.int64))
        gather_idx = g.op(
            "Expand",
            g.op("Unsqueeze", anchor, g.const([2], np.int64)),
            g.op("Concat", g.op("Shape", anchor), g.const([4], np.int64), axis=0),
        )
        boxes = g.op("GatherElements", net_boxes, gather_idx, axis=1)
        # network pixels -> input image pixels: x * W / S, y * H / S
        hw = g.cast(g.op("Slice", g.op("Shape", g.pixels), g.const([1], np.int64), g.const([3], np.int64)), np.float32)
        wh = g.op("Div", g.op("Gather", hw, g.const([1, 0], np.int64), axis=0), g.const(float(g.size), np.float32))
        boxes = g.op("Mul", boxes, g.op("Concat", wh, wh, axis=0))
        valid4 = g.op("Unsqueeze", valid, g.const([2], np.int64))
        g.op("Where", valid4, boxes, g.const(0.0, np.float32), out="boxes")
        g.op("Where", valid, best, g.const(0.0, np.float32), out="scores")
        g.op("Where", valid, labels, g.const(-1, np.int64), out="labels")
        ids = g.op("Gather", g.const(list(post["category_ids"]) or list(range(k)), np.int64), labels, axis=0)
        g.op("Where", valid, ids, g.const(-1, np.int64), out="category_ids")
        g.op("ReduceSum", g.cast(valid, np.int64), g.const([1], np.int64), keepdims=0, out="num_detections")
        for name, dtype, shape in (
            ("boxes", np.float32, ["N", d, 4]),
            ("scores", np.float32, ["N", d]),
            ("labels", np.int64, ["N", d]),
            ("category_ids", np.int64, ["N", d]),
            ("num_detections", np.int64, ["N"]),
        ):
            g.output(name, dtype, shape)

    def torch_end_to_end(self, pre: nn.Module, network: nn.Module, post: dict) -> nn.Module:
        tail = DetectionTail(
            post["size"],
            post["category_ids"],
            post["score_threshold"],
            post["nms_iou"],
            post["max_detections"],
            post["topk_candidates"],
        )
        return DetectionEndToEnd(pre, network, tail)

    def tolerances(self, options: DetectionExportOptions) -> dict[str, float]:
        return {"box_atol": float(options.box_atol)}

    def reference(self, task, x: torch.Tensor, image: np.ndarray) -> dict:
        out = task.predict_step(x)
        ref = {k: v.numpy() for k, v in to_original(out, tuple(x.shape[-2:]), [image.shape[:2]])[0].items()}
        # original pixels per network-input pixel, x1 y1 x2 y2: box errors are judged in network pixels
        (h, w), (sh, sw) = image.shape[:2], x.shape[-2:]
        return {**ref, "pixel_scale": np.array([w / sw, h / sh, w / sw, h / sh], np.float64)}

    def compare(self, task, ref, got, atol, options: DetectionExportOptions, fail) -> dict[str, float]:
        """Every detection of ``mode=predict`` is found in the export (same label and category id, box
        corners within ``export.box_atol`` pixels of the network input, score within ``atol``) and vice versa,
        except those whose score is within ``atol`` of a cut-off (the score threshold, or the last kept
        score when ``max_detections`` are kept), which a tiny numerical difference may legitimately flip.

        Box errors are measured in network-input pixels (the original-pixel error divided by the
        image's scale): the network sees that grid, so one tolerance fits a 100 px and a 4000 px photo.
        Returns ``{"boxes": network pixels, "scores": ...}``, the largest differences matched."""
        det, box_atol = task.model, float(options.box_atol)
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
