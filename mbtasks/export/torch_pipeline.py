"""End-to-end TorchScript: the traced network inside a scripted ``pixels -> answers`` module.

Same inputs, outputs and rules as :mod:`mbtasks.export.onnx_pipeline`, written in torch:
:func:`resize_pixels` (bilinear, half-pixel centres, no antialiasing; also ``mode=predict``'s resize) and
:func:`torchvision.ops.batched_nms` for detection, one image at a time (so the detection file
needs torchvision's ops library where it is loaded: ``import torchvision`` in Python,
``libtorchvision`` in C++). ``forward(pixels, score_threshold=None, iou_threshold=None)``; the
thresholds only matter for detection (``None``: the checkpoint's).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from mbtasks.export.preprocessing import Preprocessing


def _taps(in_size: int, out_size: int, start: int, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """Source rows (or columns) ``i0, i1`` and weight ``w1`` of output pixels ``start .. start + count`` of a
    bilinear resize ``in_size -> out_size`` with half-pixel centres (``F.interpolate(align_corners=False)``,
    ONNX ``Resize`` ``half_pixel``): ``out = in[i0] + (in[i1] - in[i0]) * w1``."""
    dst = torch.arange(start, start + count, dtype=torch.float64)
    src = ((dst + 0.5) * (float(in_size) / float(out_size)) - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    return i0, i1, (src - i0.double()).float()


def resize_pixels(pixels: Tensor, size: int, shorter_side: int) -> Tensor:
    """``pixels (N, H, W, 3) uint8`` -> ``(N, 3, size, size)`` float32 in 0..255, not rounded.

    ``shorter_side`` 0: stretched to ``size x size``; else the shorter side resized to ``shorter_side``
    (``round(side * shorter_side / min(H, W))``, at least 1) and the centre ``size x size`` kept. Only
    the source rows and columns the output needs are read and cast to float (a 20-megapixel photo costs
    what its ``size`` rows do), so ``mode=predict`` runs this very function on every image; the ONNX
    graph's ``Resize`` computes the same values up to float32 rounding.
    """
    h, w = pixels.shape[1], pixels.shape[2]
    if shorter_side > 0:
        scale = float(shorter_side) / float(min(h, w))
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        top, left = (nh - size) // 2, (nw - size) // 2
    else:
        nh, nw, top, left = size, size, 0, 0
    y0, y1, wy = _taps(h, nh, top, size)
    x0, x1, wx = _taps(w, nw, left, size)
    r0 = pixels.index_select(1, y0).float()
    rows = r0 + (pixels.index_select(1, y1).float() - r0) * wy.view(1, -1, 1, 1)
    c0 = rows.index_select(2, x0)
    out = c0 + (rows.index_select(2, x1) - c0) * wx.view(1, 1, -1, 1)
    return out.permute(0, 3, 1, 2).contiguous()


class Preprocess(nn.Module):
    """``pixels (N, H, W, 3) uint8`` -> normalised ``(N, 3, S, S)`` float32 (:func:`resize_pixels`, then
    ``(x / 255 - mean) / std``): what ``mode=predict`` runs and the TorchScript file holds."""

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__()
        self.size = int(pre.size)
        self.shorter_side = int(pre.shorter_side or 0)
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1))

    def forward(self, pixels: Tensor) -> Tensor:
        x = resize_pixels(pixels, self.size, self.shorter_side)
        return (x * (1 / 255.0) - self.mean) / self.std


class ClassificationPost(nn.Module):
    """``(logits, probs)`` -> ``(probs, scores, labels)``, top-k."""

    def __init__(self, top_k: int) -> None:
        super().__init__()
        self.top_k = int(top_k)

    def forward(
        self, outputs: tuple[Tensor, Tensor], h: int, w: int, score_threshold: float | None, iou_threshold: float | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        probs = outputs[1]
        scores, labels = probs.topk(self.top_k, dim=1)
        return probs, scores, labels


class EmbeddingPost(nn.Module):
    def forward(
        self, outputs: tuple[Tensor], h: int, w: int, score_threshold: float | None, iou_threshold: float | None
    ) -> tuple[Tensor]:
        return outputs


class DetectionPost(nn.Module):
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
        self, outputs: tuple[Tensor, Tensor], h: int, w: int, score_threshold: float | None, iou_threshold: float | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        scores_all, boxes_all = outputs
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


class EndToEnd(nn.Module):
    """``pixels (N, H, W, 3) uint8`` -> the task's answers: preprocessing, network, post-processing."""

    def __init__(self, pre: nn.Module, network: nn.Module, post: nn.Module) -> None:
        super().__init__()
        self.pre, self.network, self.post = pre, network, post

    def forward(self, pixels: Tensor, score_threshold: float | None = None, iou_threshold: float | None = None):
        return self.post(
            self.network(self.pre(pixels)), pixels.shape[1], pixels.shape[2], score_threshold, iou_threshold
        )


def script_end_to_end(network: nn.Module, pre: Preprocessing, post_kind: str, post: dict) -> torch.jit.ScriptModule:
    """Script the end-to-end module around ``network`` (traced; ``post_kind`` and ``post`` as for
    :func:`mbtasks.export.onnx_pipeline.wrap_network`)."""
    if post_kind == "topk":
        tail = ClassificationPost(post["top_k"])
    elif post_kind == "nms":
        tail = DetectionPost(
            pre.size,
            post["category_ids"],
            post["score_threshold"],
            post["nms_iou"],
            post["max_detections"],
            post["topk_candidates"],
        )
    elif post_kind == "none":
        tail = EmbeddingPost()
    else:
        raise ValueError(f"no end-to-end post-processing {post_kind!r}; expected topk, nms or none")
    return torch.jit.script(EndToEnd(Preprocess(pre), network, tail).eval())
