"""mode=test: re-evaluate a checkpoint on the test split; writes metrics.json."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from mbtasks.errors import DataError
from mbtasks.modes.evaldata import eval_data_config, which_test_split
from mbtasks.modes.rundir import write_config, write_metrics
from mbtasks.modes.trainer import build_trainer
from mbtasks.tasks import load_task

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    task, train_cfg = load_task(cfg.ckpt_path)
    data_cfg = eval_data_config(cfg, train_cfg, overrides)
    write_config(run_dir, cfg)
    datamodule = instantiate(data_cfg)
    datamodule.setup("test")
    test_split = which_test_split(datamodule, log)
    trained = task.info.get("class_names")
    if trained is not None and list(datamodule.info.get("class_names", trained)) != list(trained):
        raise DataError(
            f"{data_cfg.root}: classes {datamodule.info['class_names']} differ from the checkpoint's {trained}"
        )
    trainer, _ = build_trainer(cfg, run_dir, task)
    trainer.test(task, datamodule=datamodule)
    metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    metrics["test/split"] = test_split
    metrics["warnings"] = [w.text() for w in getattr(task, "health", [])]  # the checkpoint's own checks
    flat = write_metrics(run_dir, metrics)
    log.info("metrics: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in flat.items() if v is not None})
    return flat
