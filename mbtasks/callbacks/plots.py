"""PNG plots and ``results.csv`` in the run dir, to read a run without TensorBoard (as ultralytics' runs).

- after fitting: ``results.csv`` and ``results.png`` (losses, learning rates and metrics per epoch,
  from the records of ``epochs.jsonl``); detection: ``val_predictions.png``;
- after testing: classification ``confusion_matrix.png`` (counts and normalised); detection
  ``pr_curve.png`` (pycocotools' precision arrays, per class and overall) and ``test_predictions.png``;
  embedding ``roc.png`` (the stored threshold and TAR@FAR marked) and ``distances.png``.
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mbtasks.callbacks.epoch_log import EPOCH_LOG, read_epoch_log  # noqa: E402

log = logging.getLogger(__name__)


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG and close it."""
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def threshold_text(threshold: float) -> str:
    """A distance threshold with 3 significant digits (``0.00017``, ``1.13``): fixed decimals print a
    collapsed embedder's tiny threshold as ``0.000``."""
    return f"{threshold:.3g}"


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
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
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


def confusion_figure(matrix: np.ndarray, names: list[str], split: str | None = None):
    """Counts and row-normalised (recall per true class) side by side, titled with the ``split`` they count
    (``test``, or ``val`` when the data has no test split)."""
    k = len(names)
    side = min(12.0, 2.5 + 0.45 * k)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side, side))
    if split is not None:
        note = " (no test split: the split that also picked best.ckpt)" if split == "val" else ""
        fig.suptitle(f"{split} split, {int(np.sum(matrix))} images{note}", fontsize=11)
    normed = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    for ax, values, title, fmt in ((axes[0], matrix, "counts", "d"), (axes[1], normed, "normalised (rows)", ".2f")):
        ax.imshow(values, cmap="Blues", vmin=0)
        ax.set_title(f"confusion matrix, {title}", fontsize=10)
        ax.set_xticks(range(k), names, rotation=90 if k > 6 else 0, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if k <= 30:
            peak = values.max() if values.size else 0
            for i in range(k):
                for j in range(k):
                    ax.text(
                        j,
                        i,
                        format(values[i, j], fmt),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if peak and values[i, j] > peak / 2 else "black",
                    )
    fig.tight_layout()
    return fig


def pr_figure(precision: np.ndarray, category_ids: list[int], names: list[str]):
    """Precision-recall at IoU 0.5 per class and overall (mean over classes), from COCOeval's array."""
    recall = np.linspace(0, 1, precision.shape[1])
    fig, ax = plt.subplots(figsize=(6, 5))
    curves = []
    for k, cat in enumerate(category_ids):
        p = precision[0, :, k, 0, -1]  # IoU 0.5, all areas, 100 detections
        if (p < 0).all():
            continue  # no ground truth of this class
        p = np.clip(p, 0, None)
        curves.append(p)
        name = names[cat - 1] if 0 < cat <= len(names) else str(cat)
        ax.plot(recall, p, lw=1, alpha=0.8, label=f"{name} {p.mean():.3f}")
    if curves:
        mean = np.mean(curves, axis=0)
        ax.plot(recall, mean, lw=3, color="black", label=f"all classes {mean.mean():.3f} mAP@0.5")
        every = np.clip(precision[:, :, :, 0, -1], 0, None)
        valid = (precision[:, :, :, 0, -1] >= 0).all(axis=(0, 1))
        if valid.any():
            coco = every[:, :, valid].mean(axis=(0, 2))
            ax.plot(recall, coco, lw=1.5, ls="--", color="gray", label=f"all, IoU .50:.95 {coco.mean():.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall (IoU 0.5, pycocotools)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def image_grid(images: torch.Tensor):
    """``(N, 3, H, W)`` uint8 images in one figure."""
    cols = min(4, len(images))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, images, strict=False):
        ax.imshow(img.permute(1, 2, 0).numpy())
    fig.suptitle("green: ground truth, red: predicted (score >= 0.3)", fontsize=9)
    fig.tight_layout()
    return fig


def verification_figures(result, distances: np.ndarray, same: np.ndarray, threshold: float):
    """The ROC with the stored threshold and TAR@FAR marked, and the same / different distance histograms."""
    from sklearn.metrics import roc_curve

    same = np.asarray(same, bool)
    roc, ax = plt.subplots(figsize=(5, 4.5))
    if 0 < same.sum() < len(same):
        fpr, tpr, _ = roc_curve(same, -np.asarray(distances))
        ax.plot(np.clip(fpr, 1e-5, 1), tpr, lw=1.5, label=f"ROC, AUC {result.roc_auc:.3f}")
        t_fpr, t_tpr = float(np.mean(distances[~same] <= threshold)), float(np.mean(distances[same] <= threshold))
        ax.plot(
            [max(t_fpr, 1e-5)],
            [t_tpr],
            "o",
            color="tab:red",
            ms=7,
            label=f"threshold {threshold_text(threshold)}: TAR {t_tpr:.3f} @ FAR {t_fpr:.4f}",
        )
        for far, tar in result.tar_at_far.items():
            if tar is not None:
                ax.plot([far], [tar], "s", ms=6, label=f"TAR@FAR={far:g}: {tar:.3f}")
    ax.set_xscale("log")
    ax.set_xlim(1e-4 if (~same).sum() >= 10_000 else 1e-3, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"verification ROC, acc {result.accuracy:.3f} +- {result.accuracy_std:.3f}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    roc.tight_layout()
    hist, ax = plt.subplots(figsize=(5.5, 4))
    top = max(float(np.max(distances)) if len(distances) else 0.0, threshold, 1e-3) * 1.05
    bins = np.linspace(0, top, 50)
    ax.hist(distances[same], bins=bins, alpha=0.6, label=f"same identity ({int(same.sum())})", color="tab:green")
    ax.hist(distances[~same], bins=bins, alpha=0.6, label=f"different ({int((~same).sum())})", color="tab:red")
    ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold_text(threshold)}")
    ax.set_xlabel("squared L2 distance")
    ax.set_ylabel("pairs")
    ax.set_title("test pair distances", fontsize=10)
    ax.legend(fontsize=7)
    hist.tight_layout()
    return roc, hist


class RunPlots(L.Callback):
    """Writes the run-dir plots (see the module docstring) on rank 0.

    What a task draws comes from the task itself (``BaseTask.plot_batch`` for the drawn
    validation / test images, ``BaseTask.test_figures`` after testing); this callback only
    decides when, and writes the files.

    Args:
        enabled: ``callbacks.plots.enabled=false`` (or ``callbacks.plots=null``) turns them off.
        images: images drawn with their predictions (detection: predicted and true boxes).
    """

    def __init__(self, enabled: bool = True, images: int = 8) -> None:
        self.enabled = enabled
        self.images = images
        self._sample: tuple | None = None
        self.written: list[Path] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return self.enabled and trainer.is_global_zero and not trainer.sanity_checking

    @staticmethod
    def _run_dir(trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir)

    def _keep_sample(self, trainer, batch, batch_idx: int) -> None:
        # the first batch's first images, drawn once when the plots are written (not every epoch)
        if self._active(trainer) and batch_idx == 0 and self.images:
            self._sample = tuple(part[: self.images] for part in batch)

    def _write_sample(self, pl_module, name: str, run_dir: Path) -> None:
        if self._sample is None:
            return
        training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():  # torchvision warns for every image without a box
                warnings.filterwarnings("ignore", message="boxes doesn't contain any box")
                drawn = pl_module.plot_batch(self._sample, self.images)
        finally:
            pl_module.train(training)
            self._sample = None
        if drawn is not None:
            self.written.append(save_figure(image_grid(drawn), run_dir / name))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._keep_sample(trainer, batch, batch_idx)

    def on_train_end(self, trainer, pl_module) -> None:
        if not (self.enabled and trainer.is_global_zero):
            return
        run_dir = self._run_dir(trainer)
        self.written += write_results(run_dir)
        self._write_sample(pl_module, "val_predictions.png", run_dir)

    def on_test_start(self, trainer, pl_module) -> None:
        self._sample = None

    def on_test_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        self._keep_sample(trainer, batch, batch_idx)

    def on_test_end(self, trainer, pl_module) -> None:
        if not (self.enabled and trainer.is_global_zero):
            return
        run_dir = self._run_dir(trainer)
        try:
            for name, fig in pl_module.test_figures().items():
                self.written.append(save_figure(fig, run_dir / name))
            self._write_sample(pl_module, "test_predictions.png", run_dir)
        except Exception as err:  # noqa: BLE001 - a plot must never cost the run its metrics
            log.warning("could not write the test plots: %s", err)
        if self.written:
            names = ", ".join(sorted({p.name for p in self.written}))
            log.info("plots in %s: %s", run_dir, names)
            log.info("TensorBoard: tensorboard --logdir %s", run_dir / "tensorboard")
