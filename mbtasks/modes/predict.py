"""mode=predict: images in, the task's result files out (its predictor's ``write``).

Built on the predictor :func:`mbtasks.load` returns; ``predict.detector=<detection ckpt>`` with an
embedding ``ckpt_path`` runs the detect-then-embed :class:`~mbtasks.pipeline.Pipeline`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from mbtasks.inference import Predictor, collect_inputs
from mbtasks.pipeline import Pipeline, write_predictions
from mbtasks.tasks import load_predictor

log = logging.getLogger(__name__)


def predictor_for(path, cfg: DictConfig) -> Predictor:
    """A checkpoint with the ``predict.*`` fast-path options (fold_bn, channels_last, precision, batch_size)."""
    return load_predictor(
        path,
        fold_bn=bool(cfg.predict.get("fold_bn", True)),
        channels_last=bool(cfg.predict.get("channels_last", False)),
        precision=cfg.predict.get("precision", 32),
        batch_size=int(cfg.predict.get("batch_size", 32)),
    )


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    model = predictor_for(cfg.ckpt_path, cfg)
    files = collect_inputs(cfg.predict.input) if cfg.predict.get("input") else []
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.predict.get("detector"):
        # predict.* holds the chain's defaults; Pipeline(...) reads the same keys (pipeline_defaults)
        pipeline = Pipeline(
            predictor_for(cfg.predict.detector, cfg),
            model,
            float(cfg.predict.crop_margin),
            bool(cfg.predict.crop_square),
            float(cfg.predict.score_threshold),
            list(cfg.predict.detector_classes or []) or None,
            identify_threshold=cfg.predict.get("identify_threshold"),
        )
        return write_predictions(pipeline, cfg, files, run_dir)
    return model.write(cfg, files, run_dir)
