"""Classification predictions: top-k labels and scores per image."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mbtasks.inference import Predictor
from mbtasks.tasks.classification.results import Classification, TopK


class ClassificationPredictor(Predictor):
    """A classification checkpoint: :meth:`predict` gives each image's top-k classes."""

    def predict(self, inputs: Any, top_k: int = 5, skipped: dict[str, str] | None = None) -> list[Classification]:
        """One :class:`~mbtasks.tasks.classification.results.Classification` (``label``, ``score``, ``top_k``)
        per readable image.

        Args:
            inputs: an image path, a folder (every image below it, sorted), a PIL image, a numpy
                ``(H, W, 3)`` array or ``(3, H, W)`` tensor (uint8; other dtypes as the file reader maps them:
                :func:`mbtasks.inference.inputs._numeric_to_uint8`), or a list / batch of those.
            top_k: how many classes each result lists.
            skipped: collects unreadable files (name -> reason); without it they raise :class:`DataError`.
        """
        return list(self._classify(inputs, top_k, skipped))

    def _classify(self, inputs, top_k: int, skipped) -> Iterator[Classification]:
        names = self.class_names
        k = max(1, min(int(top_k), len(names)))
        for sources, _, batch in self.batches(inputs, skipped):
            scores, idx = self.forward(batch).float().cpu().topk(k, dim=1)
            for source, s_row, i_row in zip(sources, scores.tolist(), idx.tolist(), strict=True):
                top = [TopK(names[i], s) for s, i in zip(s_row, i_row, strict=True)]
                yield Classification(source.name, top[0].label, top[0].score, top)
