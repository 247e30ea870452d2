"""The run's figures: each task's, in TensorBoard and as PNGs in the run dir, and ``results.csv`` / ``results.png``
(to read a run without TensorBoard, as ultralytics' runs).

A task says what to draw (:meth:`~mbtasks.tasks.base.BaseTask.figures`: pure drawing functions of its
``tasks/<name>/figures.py`` with their data, each with a TensorBoard tag and/or a file name); this one
callback, the same for every task, decides when, draws them and writes them (on rank 0):

- after each validation: the TensorBoard tags of the task's ``val`` figures (``val/confusion_matrix``,
  ``val/detections``, ``val/roc``...);
- after fitting: ``results.csv`` and ``results.png`` (losses, learning rates and metrics per epoch, from the
  records of ``epochs.jsonl``) and the files of the last validation's figures (detection ``val_predictions.png``);
- after testing: the test figures' tags and files (classification ``confusion_matrix.png``, detection
  ``pr_curve.png`` and ``test_predictions.png``, embedding ``roc.png`` and ``distances.png``).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from mbtasks.callbacks.epoch_log import EPOCH_LOG, read_epoch_log

log = logging.getLogger(__name__)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG."""
    fig.savefig(path, dpi=110)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def write_results(run_dir: Path) -> list[Path]:
    """``results.csv`` and ``results.png`` from ``run_dir/epochs.jsonl`` (nothing if it has no records)."""
    records = read_epoch_log(run_dir / EPOCH_LOG)
    if not records:
        return []
    keys = sorted({k for r in records for k in r} - {"epoch", "step"})
    with open(run_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", *keys])
        for r in records:
            writer.writerow([r["epoch"], r["step"], *("" if r.get(k) is None else r[k] for k in keys)])
    # a metric never measured (TAR@FAR without enough pairs, mAP of an absent object size) gets no empty panel
    keys = [k for k in keys if any(_finite(r.get(k)) for r in records)]
    if not keys:
        return [run_dir / "results.csv"]
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(r["epoch"], r[key]) for r in records if _finite(r.get(key))]
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, marker="o", ms=3, lw=1.5, color="tab:orange" if key.startswith("val/") else "tab:blue")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return [run_dir / "results.csv", save_figure(fig, run_dir / "results.png")]


@contextmanager
def _evaluating(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode without gradients while a task gathers the data of its figures (it may run the model)."""
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(training)


class RunPlots(L.Callback):
    """Draws the task's figures into TensorBoard and the run dir, and writes ``results.csv`` / ``results.png``
    (see the module docstring).

    The task's :meth:`~mbtasks.tasks.base.BaseTask.figures` gives, after each validation and test, a list of
    figures: ``draw(**data)`` returns a matplotlib ``Figure`` (or, for TensorBoard only, uint8 images
    ``(N, 3, H, W)``), logged under ``tag`` and written as ``file``. A figure that fails to draw is
    reported and skipped: a plot never costs the run its metrics.

    Args:
        enabled: write the run-dir files (PNGs, ``results.csv``). ``callbacks.plots.enabled=false`` (or
            ``callbacks.plots=null``: the trainer then adds this callback disabled) keeps only the task's
            TensorBoard figures.
        images: images of the first validation / test batch handed to the task (``sample``) for figures of
            predictions (detection: drawn with predicted and true boxes).
    """

    def __init__(self, enabled: bool = True, images: int = 8) -> None:
        self.enabled = enabled
        self.images = images
        self._sample: tuple | None = None
        self._pending: list = []  # the last validation's figures with a file, written after fitting
        self.written: list[Path] = []

    @staticmethod
    def _run_dir(trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir)

    @staticmethod
    def _tensorboard(trainer: L.Trainer) -> SummaryWriter | None:
        for logger in trainer.loggers:
            if isinstance(getattr(logger, "experiment", None), SummaryWriter):
                return logger.experiment
        return None

    def _keep_sample(self, trainer: L.Trainer, batch, batch_idx: int) -> None:
        # the first batch's first images, for the figures of predictions
        if self.enabled and self.images and batch_idx == 0 and trainer.is_global_zero and not trainer.sanity_checking:
            self._sample = tuple(part[: self.images] for part in batch)

    def _figures(self, pl_module, stage: str) -> Sequence:
        sample, self._sample = self._sample, None
        try:
            with _evaluating(pl_module):
                return list(pl_module.figures(stage, sample))
        except Exception as err:  # noqa: BLE001 - a plot must never cost the run its metrics
            log.warning("could not gather the %s figures: %s", stage, err)
            return []

    @staticmethod
    def _draw(figure) -> Any:
        try:
            return figure.draw(**figure.data)
        except Exception as err:  # noqa: BLE001 - a plot must never cost the run its metrics
            log.warning("could not draw %s: %s", figure.file or figure.tag, err)
            return None

    def _log(self, trainer: L.Trainer, figures: Sequence) -> None:
        tb = self._tensorboard(trainer)
        for figure in figures:
            if tb is None or not figure.tag:
                continue
            drawn = self._draw(figure)
            if isinstance(drawn, Figure):
                tb.add_figure(figure.tag, drawn, trainer.global_step)
            elif drawn is not None:
                tb.add_images(figure.tag, drawn, trainer.global_step)

    def _write(self, run_dir: Path, figures: Sequence) -> None:
        for figure in figures:
            if figure.file and (drawn := self._draw(figure)) is not None:
                self.written.append(save_figure(drawn, run_dir / figure.file))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._keep_sample(trainer, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        figures = self._figures(pl_module, "val")
        self._log(trainer, figures)
        self._pending = [f for f in figures if f.file] if self.enabled else []

    def on_train_end(self, trainer, pl_module) -> None:
        if not (self.enabled and trainer.is_global_zero):
            return
        run_dir = self._run_dir(trainer)
        self.written += write_results(run_dir)
        self._write(run_dir, self._pending)
        self._pending = []

    def on_test_start(self, trainer, pl_module) -> None:
        self._sample = None

    def on_test_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        self._keep_sample(trainer, batch, batch_idx)

    def on_test_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        figures = self._figures(pl_module, "test")
        self._log(trainer, figures)
        if not self.enabled:
            return
        run_dir = self._run_dir(trainer)
        self._write(run_dir, figures)
        if self.written:
            names = ", ".join(sorted({p.name for p in self.written}))
            log.info("plots in %s: %s", run_dir, names)
            log.info("TensorBoard: tensorboard --logdir %s", run_dir / "tensorboard")
