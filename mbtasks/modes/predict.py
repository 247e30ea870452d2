"""mode=predict: images in, the task's result files out.

The ``predict:`` block becomes :class:`~mbtasks.inference.settings.PredictSettings` (the task's own keys
in its ``options``); the checkpoint is loaded as its task's predictor (what :func:`mbtasks.load` returns)
and its task writes the run dir's files (``TaskSpec.write_predictions``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from omegaconf import DictConfig

from mbtasks.errors import ConfigError
from mbtasks.inference import collect_inputs
from mbtasks.inference.settings import PredictSettings, task_options
from mbtasks.settings import build
from mbtasks.tasks import load_predictor, spec_for_config

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    spec = spec_for_config(cfg)
    settings = build(cfg.predict, PredictSettings, options=spec.predict_options)
    model = load_predictor(cfg.ckpt_path, **settings.loading())
    own = model.task.spec
    if own is not spec:
        # a checkpoint of another task than the config's (task= not given): its own keys at their defaults
        settings = dataclasses.replace(settings, options=task_options(own.predict_options, own.name))
    if own.write_predictions is None:
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: task {own.name} has no mode=predict output")
    files = collect_inputs(settings.input) if settings.input else []
    run_dir.mkdir(parents=True, exist_ok=True)
    return own.write_predictions(model, files, settings, run_dir)
