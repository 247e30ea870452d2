"""Detection's typed results: one image's boxes, with drawing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mbtasks.data.image_files import read_rgb
from mbtasks.inference.drawing import PALETTE, draw_boxes

# the detections a user sees drawn: predict.score_threshold's default (conf/config.yaml), plots, health checks
SHOWN_SCORE = 0.3


@dataclass
class Detections:
    """One image's detections, in the image's original pixels.

    Attributes:
        boxes: ``(D, 4)`` float32 x1y1x2y2.
        scores: ``(D,)`` float32, best first.
        labels: ``(D,)`` int64 class indices into the checkpoint's class names.
        names: ``D`` class names.
        image: the input image ``(H, W, 3)`` uint8 when it was given in memory (files are re-read to draw).
    """

    source: str
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    image: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.scores)

    def _pixels(self) -> np.ndarray:
        if self.image is not None:
            return self.image
        return read_rgb(self.source)

    def draw(self, score_threshold: float = SHOWN_SCORE) -> Image.Image:
        """The image with the detections scoring >= ``score_threshold`` drawn and labelled."""
        keep = self.scores >= score_threshold
        texts = [f"{n} {s:.2f}" for n, s, k in zip(self.names, self.scores.tolist(), keep, strict=True) if k]
        colours = [PALETTE[int(c) % len(PALETTE)] for c in self.labels[keep]]
        return draw_boxes(self._pixels(), self.boxes[keep], texts, colours)

    def save(self, path: str | Path, score_threshold: float = SHOWN_SCORE) -> Path:
        """Write :meth:`draw`'s image to ``path`` (format from the extension)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.draw(score_threshold).save(path)
        return path
