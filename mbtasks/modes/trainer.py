"""The Lightning Trainer every mode that fits or tests uses."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf

from mbtasks.atomic_files import remove_stale_temporaries
from mbtasks.callbacks import EpochLog, RngState, RunPlots, ValidationSchedule
from mbtasks.callbacks.epoch_log import EPOCH_LOG
from mbtasks.checkpoint import AtomicCheckpointIO, ConfigInCheckpoint
from mbtasks.tasks.base import BaseTask


def build_trainer(
    cfg: DictConfig, run_dir: Path, task: BaseTask, log: bool = True
) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Trainer writing TensorBoard logs, ``epochs.jsonl`` and ``checkpoints/{best,last}.ckpt`` under ``run_dir``.

    Checkpoints are written atomically (:class:`~mbtasks.checkpoint.AtomicCheckpointIO`), carry
    the run config (:class:`~mbtasks.checkpoint.ConfigInCheckpoint`) and the generator states
    (:class:`~mbtasks.callbacks.RngState`), so ``last.ckpt`` always resumes, and resumes exactly.
    Validation runs every ``trainer.check_val_every_n_epoch`` epochs and on the final one
    (:class:`~mbtasks.callbacks.ValidationSchedule`); checkpoints are written after validations.
    """
    remove_stale_temporaries(run_dir / "checkpoints")
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=task.monitor,
        mode=task.monitor_mode,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    # Lightning >= 2.5 copies last.ckpt only when the best one improves; resuming needs the latest.
    latest = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    callbacks = [
        checkpoint,
        latest,
        RngState(),
        EpochLog(run_dir / EPOCH_LOG),
        ConfigInCheckpoint(OmegaConf.to_container(cfg, resolve=True)),
    ]
    progress = bool(cfg.trainer.get("enable_progress_bar", True))
    for callback_cfg in (cfg.get("callbacks") or {}).values():
        if callback_cfg is None:
            continue
        callback = instantiate(callback_cfg)
        if isinstance(callback, ProgressBar) and not progress:
            continue
        callbacks.append(callback)
    if not any(isinstance(c, RunPlots) for c in callbacks):
        callbacks.append(
            RunPlots(enabled=False)
        )  # callbacks.plots=null: no run-dir plots, the task's TensorBoard figures
    # after the config's callbacks: it reads the stop train.time (TimeBudget) decides at the same batch
    callbacks.append(ValidationSchedule())
    logger = instantiate(cfg.logger, save_dir=str(run_dir)) if (log and cfg.get("logger")) else False
    trainer = instantiate(
        cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()]
    )
    return trainer, checkpoint
