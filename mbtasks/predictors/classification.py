"""Classification predictions: top-k labels and scores per image, as JSON."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from mbtasks.modes.common import write_json_atomic
from mbtasks.predictors.model import Predictor

log = logging.getLogger(__name__)


def predict(model: Predictor, cfg: DictConfig, files: list[Path], run_dir: Path) -> dict:
    """Write ``run_dir/predictions.json``: ``[{file, label, score, top_k: [{label, score}]}]``."""
    skipped: dict[str, str] = {}
    results = [r.to_dict() for r in model.predict(files, top_k=int(cfg.predict.top_k), skipped=skipped)]
    out = {"predictions": results, "skipped": skipped, "class_names": model.class_names}
    write_json_atomic(run_dir / "predictions.json", out)
    for path, reason in skipped.items():
        log.warning("skipped %s: %s", path, reason)
    log.info("wrote %d predictions to %s", len(results), run_dir / "predictions.json")
    return out
