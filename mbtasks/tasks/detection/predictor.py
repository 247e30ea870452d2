"""Detection predictions: boxes in original pixels."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from mbtasks.inference import Predictor
from mbtasks.models.detection.postprocess import to_original
from mbtasks.tasks.detection.results import Detections


class DetectionPredictor(Predictor):
    """A detection checkpoint: :meth:`predict` gives each image's boxes in its own pixels."""

    def predict(self, inputs: Any, skipped: dict[str, str] | None = None) -> list[Detections]:
        """One :class:`~mbtasks.tasks.detection.results.Detections` (``boxes`` xyxy original pixels, ``scores``,
        ``labels``, ``names``; ``draw()`` / ``save()``) per readable image, in input order.

        Args:
            inputs: any image input (see :meth:`mbtasks.inference.Predictor.batches`).
            skipped: collects unreadable files (name -> reason); without it they raise :class:`DataError`.
        """
        return list(self.detect(inputs, skipped))

    def detect(self, inputs: Any, skipped: dict[str, str] | None = None) -> Iterator[Detections]:
        """:meth:`predict`, one image at a time."""
        names = self.class_names
        for sources, sizes, batch in self.batches(inputs, skipped):
            detections = to_original(self.forward(batch), tuple(batch.shape[-2:]), sizes)
            for source, det in zip(sources, detections, strict=True):
                labels = det["labels"].cpu().numpy().astype(np.int64)
                yield Detections(
                    source.name,
                    det["boxes"].float().cpu().numpy(),
                    det["scores"].float().cpu().numpy(),
                    labels,
                    [names[i] for i in labels],
                    source.pixels,
                )
