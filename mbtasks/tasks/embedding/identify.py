"""Photos in, identities out: a detection checkpoint finds the faces (or any class), an embedding
checkpoint tells who they are by their nearest gallery identity (FaceNet Sec. 1: detect, crop, embed).

    pipeline = mbtasks.Pipeline("detector.ckpt", "embedder.ckpt")
    for photo in pipeline.identify("photos/", gallery="gallery/"):
        print(photo.source, [(f.identity, f.distance) for f in photo.faces])
    groups = pipeline.cluster("photos/")   # no gallery: faces grouped into person_1, person_2...

``task=embedding mode=predict ckpt_path=<embedder> predict.detector=<detector> predict.input=photos/
predict.gallery=gallery/`` runs the same code and writes ``identities.json`` and ``drawn/``
(:mod:`mbtasks.tasks.embedding.predict`).

One source for every setting of the chain: what is not given to :class:`Pipeline` comes from
embedding's ``predict.*`` keys, ``conf/task/predict/embedding.yaml`` (:func:`pipeline_defaults`), the
same keys the CLI composes, and the identification threshold from the embedder checkpoint (its 1:N threshold).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mbtasks.data.image_files import read_rgb
from mbtasks.errors import ConfigError
from mbtasks.inference import Predictor
from mbtasks.inference.settings import check_argument, predict_defaults
from mbtasks.tasks.embedding.predict_options import EmbeddingPredictOptions, default_options
from mbtasks.tasks.embedding.predictor import Gallery, cluster_embeddings
from mbtasks.tasks.embedding.results import Face, PhotoIdentities
from mbtasks.tasks.loading import load_predictor

log = logging.getLogger(__name__)

# Pipeline argument -> embedding's predict.* key that holds its default (conf/task/predict/embedding.yaml)
PIPELINE_KEYS = {
    "margin": "crop_margin",
    "square": "crop_square",
    "classes": "detector_classes",
    "identify_threshold": "identify_threshold",
}


def pipeline_defaults() -> dict[str, Any]:
    """The chain's defaults: embedding's ``predict.*`` keys and the shared ``predict.score_threshold``, the one
    place both ``mode=predict predict.detector=...`` and :class:`Pipeline` take them from."""
    defaults = default_options()
    return {
        "margin": defaults.crop_margin,
        "square": defaults.crop_square,
        "score_threshold": predict_defaults()["score_threshold"],
        "classes": defaults.detector_classes,
        "identify_threshold": defaults.identify_threshold,
    }


def as_predictor(model: str | Path | Predictor, device: str | None) -> Predictor:
    """A checkpoint path loaded as its task's predictor; :func:`mbtasks.load`'s ``Model`` unwrapped."""
    if isinstance(model, str | Path):
        return load_predictor(model, device=device)
    found = getattr(model, "predictor", model)  # mbtasks.Model holds its task's predictor
    if not isinstance(found, Predictor):
        raise TypeError(f"expected a checkpoint path or a model from mbtasks.load, got {type(model).__name__}")
    return found


def crop_boxes(image: np.ndarray, boxes: np.ndarray, margin: float = 0.0, square: bool = True) -> list[np.ndarray]:
    """Crops of ``image`` (H, W, 3) around ``boxes`` (N, 4) x1y1x2y2 pixels.

    Args:
        margin: fraction of the box side added on every side (0.2: a box 1.4x as wide).
        square: widen the shorter side to the longer one first (embedders take square inputs,
            so a non-square crop would be stretched).

    Parts of a crop outside the image are black.
    """
    out = []
    pil = Image.fromarray(image)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        if square:
            w = h = max(w, h)
        w, h = w * (1 + 2 * margin), h * (1 + 2 * margin)
        box = (round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2))
        out.append(np.asarray(pil.crop(box)))
    return out


class Pipeline:
    """Detect, crop, embed, match against a gallery (or :meth:`cluster` without one).

    Every setting left ``None`` takes its default from :func:`pipeline_defaults` (embedding's ``predict.*``
    keys, what the CLI uses), so the CLI and this class give the same answer.

    Args:
        detector: a detection checkpoint (path), or its model (:func:`mbtasks.load`, a :class:`Predictor`).
        embedder: an embedding checkpoint (path), or its model.
        margin: crop margin, a fraction of the box side added on every side (``predict.crop_margin``).
        square: square crops, the longer box side (``predict.crop_square``).
        score_threshold: detections below this score are not identified (``predict.score_threshold``).
        classes: detector class names to keep (``predict.detector_classes``; None: all).
        device: for checkpoints given as paths.
        identify_threshold: squared L2 beyond which a face is ``"unknown"`` (``predict.identify_threshold``;
            None: the embedder checkpoint's 1:N threshold).
    """

    def __init__(
        self,
        detector: str | Path | Predictor,
        embedder: str | Path | Predictor,
        margin: float | None = None,
        square: bool | None = None,
        score_threshold: float | None = None,
        classes: list[str] | None = None,
        device: str | None = None,
        identify_threshold: float | None = None,
    ) -> None:
        given = {"margin": margin, "square": square, "classes": classes, "identify_threshold": identify_threshold}
        # the keys' own checks (crop_margin >= 0, identify_threshold in [0, 4]) for the arguments too
        options: EmbeddingPredictOptions = dataclasses.replace(
            default_options(), **{PIPELINE_KEYS[k]: v for k, v in given.items() if v is not None}
        )
        margin, square, classes, identify_threshold = (getattr(options, PIPELINE_KEYS[k]) for k in given)
        if score_threshold is None:
            score_threshold = predict_defaults()["score_threshold"]
        check_argument("score_threshold", score_threshold, "predict.score_threshold")
        self.detector = as_predictor(detector, device)
        self.embedder = as_predictor(embedder, device)
        if self.embedder.task_name != "embedding":
            raise ConfigError(
                f"predict.detector needs an embedding checkpoint as ckpt_path; {self.embedder.checkpoint} "
                f"is a {self.embedder.task_name} checkpoint"
            )
        if self.detector.task_name != "detection":
            raise ConfigError(
                f"predict.detector={self.detector.checkpoint}: a {self.detector.task_name} checkpoint; "
                "expected a detection checkpoint"
            )
        unknown = sorted(set(classes or ()) - set(self.detector.class_names))
        if unknown:
            raise ConfigError(
                f"predict.detector_classes={list(classes)}: the detector has no class {unknown}; "
                f"it knows {self.detector.class_names}"
            )
        self.margin, self.square, self.score_threshold = float(margin), bool(square), float(score_threshold)
        self.classes = set(classes) if classes else None
        # the 1:N threshold of a gallery search: the argument (predict.identify_threshold), else the checkpoint's
        self.identify_threshold = (
            self.embedder.identify_threshold if identify_threshold is None else float(identify_threshold)
        )
        self.warnings = self._model_warnings()
        # what check_detections said about the last photos identified / clustered
        self.photo_warnings: list[str] = []

    def _model_warnings(self) -> list[str]:
        """The two checkpoints' health warnings (logged by name when they were loaded), summed up once for
        the chain: identities from a useless detector or embedder mean nothing."""
        found = [
            f"{role} {model.checkpoint or ''}: {w.text()}".replace(" :", ":")
            for role, model in (("detector", self.detector), ("embedder", self.embedder))
            for w in getattr(model.task, "health", [])
        ]
        if found:
            names = "; ".join(
                f"{role}: {', '.join(w.name for w in model.task.health)}"
                for role, model in (("detector", self.detector), ("embedder", self.embedder))
                if getattr(model.task, "health", [])
            )
            log.warning(
                "Pipeline: the identities it gives may mean nothing, a model may be useless (%s; "
                "see the warnings above)",
                names,
            )
        return found

    def check_detections(self, detections: list) -> list[str]:
        """Warnings about what the detector found on these photos: nothing on any of several photos (one
        photo may have no face), or as many boxes as it may output on every photo (it finds everything)."""
        if not detections:
            return []
        counts = [len(d) for d in detections]
        cap = getattr(self.detector.task.model, "max_detections", None)
        out = []
        if len(counts) > 1 and not any(counts):
            out.append(
                f"detector_found_nothing: no detection scores >= {self.score_threshold:g} on any of the "
                f"{len(counts)} photos (predict.score_threshold; the detector may be useless)"
            )
        elif cap and min(counts) >= cap:
            out.append(
                f"detector_found_everything: every one of the {len(counts)} photos has {cap} detections "
                f"scoring >= {self.score_threshold:g}, the most it outputs: it finds everything (raise "
                "predict.score_threshold, or the detector is useless)"
            )
        for text in out:
            log.warning("Pipeline: %s", text)
        return out

    def detect(self, photos: Any, skipped: dict[str, str] | None = None) -> list:
        """The detector's results (its task's ``Detections``) kept for identification (score, class)."""
        out = []
        for det in self.detector.predict(photos, skipped=skipped):
            keep = det.scores >= self.score_threshold
            if self.classes is not None:
                keep &= np.array([n in self.classes for n in det.names], bool)
            out.append(
                dataclasses.replace(
                    det,
                    boxes=det.boxes[keep],
                    scores=det.scores[keep],
                    labels=det.labels[keep],
                    names=[n for n, k in zip(det.names, keep, strict=True) if k],
                )
            )
        return out

    def identify(
        self, photos: Any, gallery: str | Path | dict[str, Any] | Gallery, skipped: dict[str, str] | None = None
    ) -> list[PhotoIdentities]:
        """Every kept detection of every photo with its nearest gallery identity (``"unknown"`` above the
        embedder's threshold).

        Args:
            photos: any input :meth:`Predictor.predict` takes.
            gallery: identity folders ``<dir>/<identity>/<image>``, ``{identity: images}`` or a :class:`Gallery`.
        """
        gallery = self.embedder.gallery(gallery)
        detections = self.detect(photos, skipped)
        self.photo_warnings = self.check_detections(detections)
        out = []
        for det in detections:
            image = det.image if det.image is not None else read_rgb(det.source)
            faces = self.embed_boxes(image, det.boxes, det.scores, gallery)
            out.append(PhotoIdentities(det.source, faces, det.image))
        return out

    def crops(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``(N, D)`` embeddings of the ``boxes`` of one image, cropped with the pipeline's margin."""
        if not len(boxes):
            return np.zeros((0, int(self.embedder.task.model.dim)), np.float32)
        return self.embedder.embed(crop_boxes(image, boxes, self.margin, self.square))[1]

    def embed_boxes(self, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, gallery: Gallery) -> list[Face]:
        """Crop, embed and match ``boxes`` of one image (``"unknown"`` beyond :attr:`identify_threshold`)."""
        if not len(boxes):
            return []
        vectors = self.crops(image, boxes)
        found = self.embedder.nearest(vectors, gallery, [""] * len(vectors), self.identify_threshold)
        return [
            Face([float(v) for v in box], float(score), m.identity, m.distance, m.match, m.nearest)
            for box, score, m in zip(boxes, scores, found, strict=True)
        ]

    def cluster(
        self, photos: Any, threshold: float | None = None, skipped: dict[str, str] | None = None
    ) -> list[PhotoIdentities]:
        """Every kept detection of every photo grouped into identities without a gallery: agglomerative
        clustering of the face embeddings (:func:`~mbtasks.tasks.embedding.predictor.cluster_embeddings`).

        Each face's ``identity`` (and ``nearest``) is its group, ``person_1`` the largest; ``distance`` its
        mean squared L2 distance to the group's other faces; ``match`` whether the group holds more than
        one face.

        Args:
            photos: any input :meth:`Predictor.predict` takes.
            threshold: squared L2 (default: the embedder's verification threshold: average linkage makes
                a 1:1 decision between two groups).
        """
        detections = self.detect(photos, skipped)
        self.photo_warnings = self.check_detections(detections)
        vectors = []
        for det in detections:
            image = det.image if det.image is not None else read_rgb(det.source)
            vectors.append(self.crops(image, det.boxes))
        rows = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
        labels = cluster_embeddings(rows, self.embedder.threshold if threshold is None else float(threshold))
        dist = np.maximum(2.0 - 2.0 * rows @ rows.T, 0.0) if len(rows) else np.zeros((0, 0))
        out, start = [], 0
        for det, v in zip(detections, vectors, strict=True):
            faces = []
            for i, (box, score) in enumerate(zip(det.boxes, det.scores, strict=True)):
                row = start + i
                mates = np.flatnonzero((labels == labels[row]) & (np.arange(len(labels)) != row))
                name = f"person_{labels[row] + 1}"
                spread = float(dist[row, mates].mean()) if len(mates) else 0.0
                faces.append(Face([float(x) for x in box], float(score), name, spread, bool(len(mates)), name))
            start += len(v)
            out.append(PhotoIdentities(det.source, faces, det.image))
        return out
