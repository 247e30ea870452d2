"""Classification's health checks on the validation confusion matrix (:mod:`mbtasks.tasks.health`).

- ``below_majority_class``: accuracy at or below always answering the most frequent class;
- ``one_class``: one class predicted for nearly every image (>= :data:`ONE_CLASS_SHARE`), while
  the data is not that one-sided.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mbtasks.tasks.health import HealthWarning, TrainingFacts

# "nearly everything": this share of the validation images given one class
ONE_CLASS_SHARE = 0.9


def check(confusion: np.ndarray, class_names: Sequence[str], facts: TrainingFacts) -> list[HealthWarning]:
    """Warnings from a validation confusion matrix.

    Args:
        confusion: ``(K, K)`` counts, rows the true class, columns the predicted one.
        class_names: the K class names.
        facts: how training went (for the likely cause).
    """
    counts = np.asarray(confusion, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        return []
    true, predicted = counts.sum(1), counts.sum(0)
    correct, majority = int(np.trace(counts)), int(true.argmax())
    cause = facts.likely_cause()
    warnings = []
    if correct <= int(true[majority]):
        warnings.append(
            HealthWarning(
                "below_majority_class",
                f"validation accuracy {correct / n:.3f} ({correct} of {n}) is at or below the majority-class rate "
                f"{true[majority] / n:.3f}, what always answering '{class_names[majority]}' scores; {cause}",
            )
        )
    top = int(predicted.argmax())
    share, true_share = predicted[top] / n, true[top] / n
    if share >= ONE_CLASS_SHARE and true_share < ONE_CLASS_SHARE:
        warnings.append(
            HealthWarning(
                "one_class",
                f"predicts '{class_names[top]}' for {share:.0%} of the validation images "
                f"({int(predicted[top])} of {n}), "
                f"which are {true_share:.0%} '{class_names[top]}'; {cause}",
            )
        )
    return warnings
