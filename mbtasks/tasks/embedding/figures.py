"""Embedding's figures: pure functions of verification results and pair distances that return matplotlib
figures, drawn on :class:`matplotlib.figure.Figure` directly (no pyplot). The run-plots callback logs and
writes them."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from mbtasks.metrics.verification import VerificationResult


def threshold_text(threshold: float) -> str:
    """A distance threshold with 3 significant digits (``0.00017``, ``1.13``): fixed decimals print a
    collapsed embedder's tiny threshold as ``0.000``."""
    return f"{threshold:.3g}"


def roc(result: VerificationResult, title: str = "verification ROC") -> Figure:
    """The protocol's ROC (log-scaled false accept rate), with its accuracy and AUC."""
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    if len(result.fpr):
        ax.plot(np.clip(result.fpr, 1e-5, 1), result.tpr, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(1e-4 if result.num_different >= 10_000 else 1e-3, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(
        f"{title}\nacc {result.accuracy:.3f} +- {result.accuracy_std:.3f}, AUC {result.roc_auc:.3f}", fontsize=9
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def roc_at_threshold(result: VerificationResult, distances: np.ndarray, same: np.ndarray, threshold: float) -> Figure:
    """The ROC of the pairs with the stored ``threshold`` and the TAR@FAR points marked.

    Args:
        distances: ``(P,)`` pair distances.
        same: ``(P,)`` True for same-identity pairs.
    """
    distances, same = np.asarray(distances), np.asarray(same, bool)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    if 0 < same.sum() < len(same):
        fpr, tpr, _ = roc_curve(same, -distances)
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
    fig.tight_layout()
    return fig


def distance_histogram(distances: np.ndarray, same: np.ndarray, threshold: float) -> Figure:
    """Histograms of the same-identity and different-identity pair distances, the ``threshold`` marked
    (arguments as :func:`roc_at_threshold`)."""
    distances, same = np.asarray(distances), np.asarray(same, bool)
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    top = max(float(np.max(distances)) if len(distances) else 0.0, threshold, 1e-3) * 1.05
    bins = np.linspace(0, top, 50)
    ax.hist(distances[same], bins=bins, alpha=0.6, label=f"same identity ({int(same.sum())})", color="tab:green")
    ax.hist(distances[~same], bins=bins, alpha=0.6, label=f"different ({int((~same).sum())})", color="tab:red")
    ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold_text(threshold)}")
    ax.set_xlabel("squared L2 distance")
    ax.set_ylabel("pairs")
    ax.set_title("test pair distances", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
