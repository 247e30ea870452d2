"""Embedding's typed results: embeddings, verification, gallery identities, and the faces of a photo
(:class:`~mbtasks.tasks.embedding.identify.Pipeline`), with drawing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mbtasks.data.image_files import read_rgb
from mbtasks.inference.drawing import draw_boxes


def _significant(x: float) -> float:
    """Seven significant digits (all a float32 distance holds): decimal places would turn a tiny distance
    into its threshold and contradict ``match``."""
    return float(f"{x:.7g}")


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
