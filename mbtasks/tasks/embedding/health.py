"""Embedding health checks on the validation pairs (:mod:`mbtasks.tasks.health`).

Embeddings have unit length, so squared L2 distances lie in [0, 4] (random directions: about 2).

- ``collapsed_embeddings``: the median pair distance is near 0 (every image maps to about one point);
- ``tiny_threshold``: the verification threshold chosen on validation is near 0: it accepts only
  near-identical pairs (a collapsed embedder stores e.g. 0.00017);
- ``overlapping_distances``: same- and different-identity distances overlap (ROC AUC near chance).
"""

from __future__ import annotations

import math

import numpy as np

from mbtasks.tasks.health import HealthWarning, TrainingFacts

# squared L2 on the 0-4 scale under which distances / thresholds count as collapsed
COLLAPSED = 0.01
# ROC AUC below this: the two distance distributions overlap (0.5 is chance)
OVERLAP_AUC = 0.6


def check(
    distances: np.ndarray, same: np.ndarray, threshold: float, roc_auc: float, facts: TrainingFacts
) -> list[HealthWarning]:
    """Warnings from the validation pairs.

    Args:
        distances: ``(M,)`` squared L2 distances of the pairs.
        same: ``(M,)`` bool, same identity.
        threshold: the verification threshold chosen on them (what checkpoints store).
        roc_auc: their ROC AUC (NaN when one kind of pair is missing).
        facts: how training went (for the likely cause).
    """
    d = np.asarray(distances, np.float64)
    y = np.asarray(same, bool)
    if not len(d):
        return []
    cause = facts.likely_cause()
    warnings = []
    median = float(np.median(d))
    if median < COLLAPSED:
        kinds = ", ".join(
            f"{name} {float(np.median(d[m])):.3g}" for name, m in (("same", y), ("different", ~y)) if m.any()
        )
        warnings.append(
            HealthWarning(
                "collapsed_embeddings",
                f"the embeddings have collapsed: the median squared-L2 distance of the {len(d)} validation pairs is "
                f"{median:.3g} on the 0-4 scale (median by kind: {kinds}); {cause}",
            )
        )
    if threshold < COLLAPSED:
        warnings.append(
            HealthWarning(
                "tiny_threshold",
                f"the verification threshold {threshold:.3g} is tiny on the 0-4 squared-L2 scale: it accepts only "
                f"near-identical pairs; {cause}",
            )
        )
    if math.isfinite(roc_auc) and roc_auc < OVERLAP_AUC:
        warnings.append(
            HealthWarning(
                "overlapping_distances",
                f"same- and different-identity distances overlap: validation ROC AUC {roc_auc:.3f} (0.5 is chance); "
                f"{cause}",
            )
        )
    return warnings
