"""Classification predictions: top-k labels and scores per image (``predictions.json``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mbtasks.atomic_files import write_json_atomic
from mbtasks.inference import Predictor
from mbtasks.results import Classification, TopK

log = logging.getLogger(__name__)


class ClassificationPredictor(Predictor):
    """A classification checkpoint: :meth:`predict` gives each image's top-k classes."""

    def predict(self, inputs: Any, top_k: int = 5, skipped: dict[str, str] | None = None) -> list[Classification]:
        """One :class:`~mbtasks.results.Classification` (``label``, ``score``, ``top_k``) per readable image.

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

    def write(self, cfg: DictConfig, files: list[Path], run_dir: Path) -> dict:
        """``run_dir/predictions.json``: ``[{file, label, score, top_k: [{label, score}]}]``."""
        skipped: dict[str, str] = {}
        results = [r.to_dict() for r in self.predict(files, top_k=int(cfg.predict.top_k), skipped=skipped)]
        out = {"predictions": results, "skipped": skipped, "class_names": self.class_names}
        write_json_atomic(run_dir / "predictions.json", out)
        for path, reason in skipped.items():
            log.warning("skipped %s: %s", path, reason)
        log.info("wrote %d predictions to %s", len(results), run_dir / "predictions.json")
        return out
