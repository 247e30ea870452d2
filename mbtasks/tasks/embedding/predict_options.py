"""Embedding's own ``predict.*`` keys (``conf/task/predict/embedding.yaml``): what ``mode=predict`` writes
and the detect-then-embed chain's settings, which :class:`~mbtasks.tasks.embedding.identify.Pipeline`
takes its defaults from too (so the CLI and the Python API give the same answer). The chain's score
threshold is the shared ``predict.score_threshold`` (:class:`~mbtasks.inference.settings.PredictSettings`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mbtasks.inference.settings import PredictOptions, task_options
from mbtasks.settings import setting


@dataclass(frozen=True, kw_only=True)
class EmbeddingPredictOptions(PredictOptions):
    """Attributes:
    pairs: a file of image pairs to verify (``pairs.json``).
    gallery: identity folders ``<dir>/<identity>/<image>`` the queries are named from (``gallery.json``).
    detector: a detection checkpoint: photos are detected, cropped, embedded, named (``identities.json``).
    detector_classes: detector classes to identify (None: all).
    crop_margin / crop_square: the crop around a detection (a fraction of the box side; the longer side).
    identify_threshold: squared L2 beyond which a query is ``"unknown"`` (None: the checkpoint's 1:N one).
    """

    section: ClassVar[str] = "predict"
    pairs: Any = setting(number=False, optional=True)
    gallery: Any = setting(number=False, optional=True)
    detector: Any = setting(number=False, optional=True)
    detector_classes: Any = setting(number=False, optional=True)
    crop_margin: float = setting(low=0, example="0.2, a fraction of the box side")
    crop_square: bool = setting(choices=(True, False))
    identify_threshold: float | None = setting(
        low=0, high=4, optional=True, example="1.0, a squared-L2 distance; null: the checkpoint's 1:N threshold"
    )

    def gives_images(self) -> bool:
        return bool(self.pairs or self.gallery)


def default_options() -> EmbeddingPredictOptions:
    """The keys at their defaults (``conf/task/predict/embedding.yaml``)."""
    return task_options(EmbeddingPredictOptions, "embedding")
