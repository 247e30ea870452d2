"""Pieces every mode shares: run-dir files, trainer assembly, data config for re-evaluation."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf

from mbtasks.callbacks import EpochLog, RngState
from mbtasks.checkpoint_io import AtomicCheckpointIO, remove_stale_temporaries
from mbtasks.tasks.base import BaseTask

# One line of train/val metrics per finished epoch, exact across crash + resume.
EPOCH_LOG = "epochs.jsonl"


def is_rank_zero() -> bool:
    """True in the process that writes run-dir files (rank 0 of DDP / torchrun / SLURM, or the only one).

    Under DDP every rank runs the mode; files other than checkpoints (which Lightning saves on
    rank 0) are written by rank 0 only, into the one run dir Lightning passes to every rank.
    """
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def write_json_atomic(path: Path, payload) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def to_float_dict(metrics: Mapping) -> dict[str, float | str | None]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, str):  # e.g. "test/split"
            out[str(key)] = value
            continue
        v = float(value.item() if hasattr(value, "item") else value)
        out[str(key)] = v if math.isfinite(v) else None
    return out


def write_metrics(run_dir: Path, metrics: Mapping) -> dict[str, float | str | None]:
    """``run_dir/metrics.json``: a flat object of namespaced final metrics (``test/acc_top1``...)."""
    flat = to_float_dict(metrics)
    if is_rank_zero():
        write_json_atomic(run_dir / "metrics.json", flat)
    return flat


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    if not is_rank_zero():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def build_trainer(cfg: DictConfig, run_dir: Path, task: BaseTask, log: bool = True) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Trainer writing TensorBoard logs, ``epochs.jsonl`` and ``checkpoints/{best,last}.ckpt`` under ``run_dir``.

    Checkpoints are written atomically (:class:`~mbtasks.checkpoint_io.AtomicCheckpointIO`) and
    carry the generator states (:class:`~mbtasks.callbacks.RngState`), so ``last.ckpt`` always
    resumes, and resumes exactly.
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
    latest = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                             enable_version_counter=False)
    callbacks = [checkpoint, latest, RngState(), EpochLog(run_dir / EPOCH_LOG)]
    progress = bool(cfg.trainer.get("enable_progress_bar", True))
    for callback_cfg in (cfg.get("callbacks") or {}).values():
        if callback_cfg is None:
            continue
        callback = instantiate(callback_cfg)
        if isinstance(callback, ProgressBar) and not progress:
            continue
        callbacks.append(callback)
    logger = instantiate(cfg.logger, save_dir=str(run_dir)) if (log and cfg.get("logger")) else False
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir),
                          plugins=[AtomicCheckpointIO()])
    return trainer, checkpoint


def override_keys(overrides: Iterable[str]) -> list[tuple[str, str]]:
    """``["data.root=/x", "+a=1"]`` -> ``[("data.root", "/x"), ("a", "1")]``."""
    pairs = []
    for item in overrides:
        key, _, value = item.partition("=")
        pairs.append((key.lstrip("+~"), value))
    return pairs


def eval_data_config(cfg: DictConfig, train_cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Data config for re-evaluating a checkpoint.

    The checkpoint's own data config, with any ``data.*`` keys given on the command
    line applied on top; a ``data=<group>`` choice on the command line takes the
    freshly composed ``cfg.data`` instead.
    """
    pairs = override_keys(overrides)
    if any(key == "data" for key, _ in pairs):
        return cfg.data
    data = OmegaConf.create({"data": OmegaConf.to_container(train_cfg.data, resolve=False)})
    for key, _ in pairs:
        if key.startswith("data."):
            OmegaConf.update(data, key, OmegaConf.select(cfg, key), force_add=True)
    merged = OmegaConf.merge(OmegaConf.create({"data_dir": cfg.get("data_dir")}), data)
    return merged.data


def which_test_split(datamodule, log) -> str:
    """The split the test metrics come from (``metrics.json`` ``test/split``); warns when it is not a test split.

    Without a test split the data modules test on the validation split, the one that also
    picked ``best.ckpt``: those numbers are optimistic and must not be used to choose recipes.
    """
    split = getattr(datamodule, "test_split", "test")
    if split != "test":
        log.warning("NO TEST SPLIT in %s: the test/* metrics are measured on the %s split, which also picked "
                    "best.ckpt, so they are optimistic; metrics.json says \"test/split\": \"%s\". Give the data a "
                    "test split (data.test_ann, data.test_split or a test/ folder) for an unbiased number",
                    getattr(datamodule, "root", "the data"), split, split)
    return split
