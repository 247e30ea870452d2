"""Detection's figures: pure functions of images, boxes and class names.

Boxes are drawn with torchvision (uint8 images); the grids and curves are matplotlib figures drawn on
:class:`matplotlib.figure.Figure` directly (no pyplot). The run-plots callback logs and writes them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.utils import draw_bounding_boxes

from mbtasks.tasks.detection.results import SHOWN_SCORE


def draw_boxes(
    images: torch.Tensor,
    true_boxes: Sequence[torch.Tensor],
    detections: Sequence[dict],
    names: Sequence[str],
    score_threshold: float = SHOWN_SCORE,
) -> torch.Tensor:
    """Images with ground truth (green) and detections scoring at least ``score_threshold`` (red, labelled).

    Args:
        images: ``(N, 3, H, W)`` pixels in [0, 1].
        true_boxes: per image ``(M, 4)`` x1y1x2y2 in pixels.
        detections: per image ``boxes`` ``(D, 4)`` x1y1x2y2, ``scores`` ``(D,)``, ``labels`` ``(D,)`` into ``names``.

    Returns:
        ``(N, 3, H, W)`` uint8.
    """
    pixels = (images.float().clamp(0, 1) * 255).to(torch.uint8)
    drawn = []
    with warnings.catch_warnings():  # torchvision warns for every image without a box
        warnings.filterwarnings("ignore", message="boxes doesn't contain any box")
        for img, gt, det in zip(pixels, true_boxes, detections, strict=True):
            img = draw_bounding_boxes(img, gt, colors="lime", width=1)
            keep = det["scores"] >= score_threshold
            labels = [f"{names[int(c)]} {s:.2f}" for c, s in zip(det["labels"][keep], det["scores"][keep], strict=True)]
            drawn.append(draw_bounding_boxes(img, det["boxes"][keep], labels=labels, colors="red", width=1))
    return torch.stack(drawn)


def image_grid(images: torch.Tensor, title: str = "") -> Figure:
    """``(N, 3, H, W)`` uint8 images in one figure."""
    cols = min(4, len(images))
    rows = math.ceil(len(images) / cols)
    fig = Figure(figsize=(3 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, images, strict=False):
        ax.imshow(img.permute(1, 2, 0).numpy())
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def prediction_grid(
    images: torch.Tensor, true_boxes: Sequence[torch.Tensor], detections: Sequence[dict], names: Sequence[str]
) -> Figure:
    """:func:`draw_boxes` in a grid, drawn at >= 256 px so that labels stay readable on small inputs
    (arguments as there)."""
    scale = max(1, 256 // int(images.shape[-1]))
    big = torch.nn.functional.interpolate(images.float(), scale_factor=scale, mode="nearest")
    detections = [{k: v * scale if k == "boxes" else v for k, v in d.items()} for d in detections]
    drawn = draw_boxes(big, [b * scale for b in true_boxes], detections, names)
    return image_grid(drawn, f"green: ground truth, red: predicted (score >= {SHOWN_SCORE:g})")


def pr_curve(precision: np.ndarray, category_ids: Sequence[int], names: Sequence[str]) -> Figure:
    """Precision-recall at IoU 0.5 per class and overall (mean over classes), from COCOeval's array.

    Args:
        precision: COCOeval's ``(T, R, K, A, M)`` precision array, -1 where a class has no ground truth.
        category_ids: the K axis' category ids (1-based into ``names``).
    """
    recall = np.linspace(0, 1, precision.shape[1])
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    curves = []
    for k, cat in enumerate(category_ids):
        p = precision[0, :, k, 0, -1]  # IoU 0.5, all areas, 100 detections
        if (p < 0).all():
            continue  # no ground truth of this class
        p = np.clip(p, 0, None)
        curves.append(p)
        name = names[cat - 1] if 0 < cat <= len(names) else str(cat)
        ax.plot(recall, p, lw=1, alpha=0.8, label=f"{name} {p.mean():.3f}")
    if curves:
        mean = np.mean(curves, axis=0)
        ax.plot(recall, mean, lw=3, color="black", label=f"all classes {mean.mean():.3f} mAP@0.5")
        every = np.clip(precision[:, :, :, 0, -1], 0, None)
        valid = (precision[:, :, :, 0, -1] >= 0).all(axis=(0, 1))
        if valid.any():
            coco = every[:, :, valid].mean(axis=(0, 2))
            ax.plot(recall, coco, lw=1.5, ls="--", color="gray", label=f"all, IoU .50:.95 {coco.mean():.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall (IoU 0.5, pycocotools)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig
