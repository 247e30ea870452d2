"""mode=predict: images in, per-task results (JSON, drawn images, embeddings) out.

Built on :class:`~mbtasks.predictors.model.Predictor`, the object :func:`mbtasks.load` returns;
``predict.detector=<detection ckpt>`` with an embedding ``ckpt_path`` runs the detect-then-embed
:class:`~mbtasks.pipeline.Pipeline`.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from omegaconf import DictConfig

from mbtasks.errors import ConfigError
from mbtasks.predictors.common import collect_inputs
from mbtasks.predictors.model import Predictor

log = logging.getLogger(__name__)

# task name -> module in mbtasks.predictors with a ``predict(model, cfg, files, run_dir)``
PREDICTORS = {
    "classification": "mbtasks.predictors.classification",
    "detection": "mbtasks.predictors.detection",
    "embedding": "mbtasks.predictors.embedding",
}


def load_predictor(path, cfg: DictConfig) -> Predictor:
    """A checkpoint with the ``predict.*`` fast-path options (fold_bn, channels_last, precision, batch_size)."""
    return Predictor.from_checkpoint(path, fold_bn=bool(cfg.predict.get("fold_bn", True)),
                                     channels_last=bool(cfg.predict.get("channels_last", False)),
                                     precision=cfg.predict.get("precision", 32),
                                     batch_size=int(cfg.predict.get("batch_size", 32)))


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    model = load_predictor(cfg.ckpt_path, cfg)
    files = collect_inputs(cfg.predict.input) if cfg.predict.get("input") else []
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.predict.get("detector"):
        if model.task_name != "embedding":
            raise ConfigError(f"predict.detector needs an embedding checkpoint as ckpt_path; {cfg.ckpt_path} is "
                              f"{model.task_name}")
        from mbtasks.pipeline import Pipeline, write_predictions

        pipeline = Pipeline(load_predictor(cfg.predict.detector, cfg), model, float(cfg.predict.crop_margin),
                            bool(cfg.predict.crop_square), float(cfg.predict.score_threshold),
                            list(cfg.predict.detector_classes or []) or None)
        return write_predictions(pipeline, cfg, files, run_dir)
    module = importlib.import_module(PREDICTORS[model.task_name])
    return module.predict(model, cfg, files, run_dir)
