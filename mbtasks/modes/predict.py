"""mode=predict: images in, per-task results (JSON, drawn images, embeddings) out."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from omegaconf import DictConfig

from mbtasks.data.io import is_image_file
from mbtasks.errors import ConfigError
from mbtasks.tasks import load_task

log = logging.getLogger(__name__)

# task name -> module in mbtasks.predictors with a ``predict(task, train_cfg, cfg, files, run_dir)``
PREDICTORS = {
    "classification": "mbtasks.predictors.classification",
    "detection": "mbtasks.predictors.detection",
    "embedding": "mbtasks.predictors.embedding",
}


def collect_inputs(spec: str) -> list[Path]:
    """An image file, or every image below a folder (recursively, sorted)."""
    path = Path(spec)
    if path.is_file():
        if not is_image_file(path):
            raise ConfigError(f"predict.input={spec}: not an image file (by extension)")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise ConfigError(f"predict.input={spec}: the folder holds no image files")
        return files
    raise ConfigError(f"predict.input={spec}: no such file or folder")


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    task, train_cfg = load_task(cfg.ckpt_path)
    files = collect_inputs(cfg.predict.input) if cfg.predict.get("input") else []
    module = importlib.import_module(PREDICTORS[task.name])
    run_dir.mkdir(parents=True, exist_ok=True)
    return module.predict(task, train_cfg, cfg, files, run_dir)
