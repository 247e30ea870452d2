"""Boxes drawn on a photo, the pictures ``mode=predict`` writes (``drawn/``) for every task with boxes."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes

# Box colours by class index (cycled).
PALETTE = [
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
    "#9a6324",
    "#800000",
    "#aaffc3",
    "#808000",
    "#000075",
]


def draw_boxes(image: np.ndarray, boxes: np.ndarray, texts: list[str], colours: list[str]) -> Image.Image:
    """``image`` (H, W, 3) uint8 with ``boxes`` (N, 4) x1y1x2y2 pixels drawn and labelled."""
    pixels = torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1)  # a copy: PIL arrays are read-only
    width = max(1, round(max(image.shape[:2]) / 320))
    drawn = draw_bounding_boxes(
        pixels,
        torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=texts,
        colors=colours,
        width=width,
        fill_labels=True,
    )
    return Image.fromarray(drawn.permute(1, 2, 0).numpy())
