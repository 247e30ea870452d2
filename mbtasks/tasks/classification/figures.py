"""Classification's figures: pure functions of arrays and class names that return matplotlib figures.

Drawn on :class:`matplotlib.figure.Figure` directly (no pyplot, so no backend to pick and nothing to close);
the run-plots callback (:mod:`mbtasks.callbacks.plots`) logs and writes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torchmetrics.utilities.plot import plot_confusion_matrix


def confusion_matrix(matrix: np.ndarray, names: Sequence[str], split: str | None = None) -> Figure:
    """Counts and row-normalised (recall per true class) side by side, titled with the ``split`` they count
    (``test``, or ``val`` when the data has no test split).

    Args:
        matrix: ``(K, K)`` counts, rows true classes, columns predicted.
        names: the K class names.
        split: the split counted, or None for no title.
    """
    k = len(names)
    side = min(12.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(2 * side, side))
    axes = fig.subplots(1, 2)
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


def confusion_counts(matrix: np.ndarray, names: Sequence[str]) -> Figure:
    """The validation confusion matrix in TensorBoard: counts, torchmetrics' plot."""
    fig = Figure(layout="constrained")
    plot_confusion_matrix(torch.as_tensor(matrix), ax=fig.subplots(), labels=list(names))
    return fig


def prediction_grid(
    images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, names: Sequence[str], step: int
) -> Figure:
    """Validation images titled with the predicted class (and the true one), green when right.

    Args:
        images: ``(N, 3, H, W)`` pixels in [0, 1].
        labels / preds: ``(N,)`` true and predicted class indices into ``names``.
        step: the training step, for the title.
    """
    cols = min(8, len(images))
    rows = (len(images) + cols - 1) // cols
    fig = Figure(figsize=(1.6 * cols, 1.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, y, p in zip(axes.flat, images, labels, preds, strict=False):
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(
            f"{names[int(p)]}\n(true: {names[int(y)]})", fontsize=7, color="green" if int(y) == int(p) else "red"
        )
    fig.suptitle(f"validation, step {step}: predicted (true), green when right", fontsize=8)
    fig.tight_layout()
    return fig
