"""mode=train: fit, then test the best checkpoint; writes metrics.json and checkpoints."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mbtasks.callbacks.time_budget import BudgetSettings
from mbtasks.errors import NonFiniteLossError
from mbtasks.modes.evaldata import which_test_split
from mbtasks.modes.rundir import write_config, write_metrics
from mbtasks.modes.trainer import build_trainer
from mbtasks.profiling import summary_line
from mbtasks.settings import build, setting
from mbtasks.tasks import build_task, health

log = logging.getLogger(__name__)

# metrics.json key: the global step training ended at (mode=train writes it with the final metrics)
STEPS_KEY = "train/steps"


@dataclass(frozen=True, kw_only=True)
class TrainSettings(BudgetSettings):
    """The ``train:`` block: the time budget (``time``, ``val_share``) and ``test_after``."""

    section: ClassVar[str] = "train"
    # false: no final test (hparams_search trials are scored on validation)
    test_after: bool = setting(choices=(True, False))


def train_settings(cfg: DictConfig) -> TrainSettings:
    """``cfg.train`` as :class:`TrainSettings` (its ``_target_``; run configs written before have none)."""
    return build(cfg.get("train"), TrainSettings)


def flat_hparams(cfg: DictConfig) -> dict:
    """The resolved config as ``{"a.b": scalar}`` for TensorBoard's hparams view."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node if isinstance(node, int | float | str | bool) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    settings = train_settings(cfg)  # a bad budget fails before any data is read
    L.seed_everything(int(cfg.seed), workers=True)
    write_config(run_dir, cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    test_split = which_test_split(datamodule, log)
    task = build_task(cfg, datamodule.info)
    log.info("model: %s", summary_line(task.model, int(cfg.data.image_size)))
    trainer, checkpoint = build_trainer(cfg, run_dir, task)
    resuming = bool(cfg.get("resume"))
    if resuming:
        log.info("resuming %s from %s", run_dir, cfg.ckpt_path)
    try:
        # Our checkpoints hold tensors and plain containers only (RngState included): no pickled code runs.
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    except FloatingPointError as err:
        last = run_dir / "checkpoints" / "last.ckpt"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        raise NonFiniteLossError(f"{err}; {kept}") from err
    metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
    metrics[STEPS_KEY] = trainer.global_step  # where training ended: resume= of a finished run checks it
    if checkpoint.best_model_score is not None:
        metrics[f"{task.monitor}_best"] = checkpoint.best_model_score
    best = checkpoint.best_model_path or checkpoint.last_model_path or None
    if settings.test_after:
        trainer.test(task, datamodule=datamodule, ckpt_path=best, weights_only=True)
        metrics.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        metrics["test/split"] = test_split
    metrics["warnings"] = health.report(task)  # the tested checkpoint's validation health checks
    skipped = datamodule.skipped()
    if skipped:
        metrics["data/skipped_files"] = len(skipped)
        log.warning("%d unreadable files were skipped (first: %s)", len(skipped), next(iter(skipped)))
    rescaled = datamodule.rescaled()
    if rescaled:
        metrics["data/rescaled_annotations"] = len(rescaled)
        log.warning(
            "%d images differ in size from their annotations; their boxes were rescaled (first: %s: %s)",
            len(rescaled),
            *next(iter(rescaled.items())),
        )
    flat = write_metrics(run_dir, metrics)
    if trainer.logger and trainer.is_global_zero:
        trainer.logger.log_hyperparams(
            flat_hparams(cfg), {k: v for k, v in flat.items() if k.startswith("test/") and isinstance(v, float)}
        )
    log.info(
        "metrics: %s",
        {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in flat.items()
            if v is not None and k.startswith("test/")
        },
    )
    log.info("run dir: %s", run_dir)
    return flat
