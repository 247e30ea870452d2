"""Classification's side of ``mode=predict``: its ``predict.*`` keys and ``predictions.json``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mbtasks.atomic_files import write_json_atomic
from mbtasks.inference.settings import PredictOptions, PredictSettings
from mbtasks.settings import setting
from mbtasks.tasks.classification.predictor import ClassificationPredictor

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ClassificationPredictOptions(PredictOptions):
    """``conf/task/predict/classification.yaml``."""

    section: ClassVar[str] = "predict"
    top_k: int = setting(integer=True, low=1, example="5")


def write_predictions(
    model: ClassificationPredictor, files: list[Path], settings: PredictSettings, run_dir: Path
) -> dict:
    """``run_dir/predictions.json``: ``{"predictions": [{file, label, score, top_k: [{label, score}]}],
    "skipped", "class_names"}``."""
    skipped: dict[str, str] = {}
    results = [r.to_dict() for r in model.predict(files, top_k=settings.options.top_k, skipped=skipped)]
    out = {"predictions": results, "skipped": skipped, "class_names": model.class_names}
    write_json_atomic(run_dir / "predictions.json", out)
    for path, reason in skipped.items():
        log.warning("skipped %s: %s", path, reason)
    log.info("wrote %d predictions to %s", len(results), run_dir / "predictions.json")
    return out
