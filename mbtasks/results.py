"""Typed per-image results returned by :meth:`mbtasks.Model.predict` and :class:`mbtasks.Pipeline`.

Plain dataclasses of numbers and numpy arrays: what the CLI writes as JSON is ``to_dict()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes

from mbtasks.data.image_files import read_rgb

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


def _significant(x: float) -> float:
    """Seven significant digits (all a float32 distance holds): decimal places would turn a tiny distance
    into its threshold and contradict ``match``."""
    return float(f"{x:.7g}")


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


@dataclass
class TopK:
    label: str
    score: float


@dataclass
class Classification:
    """One image's class: ``label`` / ``score`` of the best class and the ``top_k`` list, best first."""

    source: str
    label: str
    score: float
    top_k: list[TopK]

    def to_dict(self) -> dict:
        return {
            "file": self.source,
            "label": self.label,
            "score": round(self.score, 6),
            "top_k": [{"label": t.label, "score": round(t.score, 6)} for t in self.top_k],
        }


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

    def draw(self, score_threshold: float = 0.3) -> Image.Image:
        """The image with the detections scoring >= ``score_threshold`` drawn and labelled."""
        keep = self.scores >= score_threshold
        texts = [f"{n} {s:.2f}" for n, s, k in zip(self.names, self.scores.tolist(), keep, strict=True) if k]
        colours = [PALETTE[int(c) % len(PALETTE)] for c in self.labels[keep]]
        return draw_boxes(self._pixels(), self.boxes[keep], texts, colours)

    def save(self, path: str | Path, score_threshold: float = 0.3) -> Path:
        """Write :meth:`draw`'s image to ``path`` (format from the extension)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.draw(score_threshold).save(path)
        return path


@dataclass
class Embedding:
    """One image's unit-length embedding ``vector`` ``(D,)`` float32."""

    source: str
    vector: np.ndarray


@dataclass
class Verification:
    """``same`` when the squared L2 ``distance`` of two embeddings is <= the checkpoint's ``threshold``."""

    same: bool
    distance: float
    threshold: float


@dataclass
class Identity:
    """The nearest gallery identity of one query; ``identity`` is ``"unknown"`` above the 1:N threshold
    (the embedder checkpoint's open-set threshold, or ``predict.identify_threshold``).

    Attributes:
        nearest: the nearest gallery identity, whatever its distance.
        distance: squared L2 distance to the nearest gallery image.
        match: ``distance <= threshold``.
        nearest_file: the gallery image it matched.
    """

    source: str
    identity: str
    nearest: str
    distance: float
    match: bool
    nearest_file: str

    def to_dict(self) -> dict:
        return {
            "file": self.source,
            "identity": self.identity,
            "nearest": self.nearest,
            "distance": _significant(self.distance),
            "match": self.match,
            "nearest_file": self.nearest_file,
        }


@dataclass
class Face:
    """One detected object / face of a photo with its identity (``box`` x1y1x2y2 original pixels).

    From :meth:`Pipeline.identify`: ``identity`` is the nearest gallery identity, or ``"unknown"`` when
    its ``distance`` (squared L2) is above the 1:N threshold (``match`` False). From
    :meth:`Pipeline.cluster`: ``identity`` is the face's group (``person_1``...), ``distance`` its mean
    distance to the group's other faces and ``match`` whether the group has other faces.
    """

    box: list[float]
    score: float
    identity: str
    distance: float
    match: bool
    nearest: str

    def to_dict(self) -> dict:
        return {
            "box": [round(v, 2) for v in self.box],
            "score": round(self.score, 5),
            "identity": self.identity,
            "nearest": self.nearest,
            "distance": _significant(self.distance),
            "match": self.match,
        }


@dataclass
class PhotoIdentities:
    """The faces found in one photo (detector) and who they are (embedder + gallery)."""

    source: str
    faces: list[Face]
    image: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"file": self.source, "faces": [f.to_dict() for f in self.faces]}

    def draw(self) -> Image.Image:
        """The photo with each face's box and name (green: known, red: unknown)."""
        pixels = self.image if self.image is not None else read_rgb(self.source)
        texts = [f"{f.identity} {f.distance:.2f}" for f in self.faces]
        colours = ["#3cb44b" if f.match else "#e6194b" for f in self.faces]
        return draw_boxes(pixels, np.asarray([f.box for f in self.faces], np.float32), texts, colours)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.draw().save(path)
        return path
