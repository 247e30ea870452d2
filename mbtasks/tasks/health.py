"""Is the trained model of any use? Named warnings from a task's validation outputs, kept in its checkpoints.

Each task package has a ``health.py`` whose ``check(...)`` reads one validation epoch's outputs
(classification: the confusion matrix; embedding: the pair distances and threshold; detection:
the detections) and returns :class:`HealthWarning` s. The task keeps the latest list as
``task.health`` and :class:`~mbtasks.tasks.base.BaseTask` stores it in every checkpoint
(``ckpt["mbtasks"]["health"]``), so that:

- ``mode=train`` logs the best checkpoint's warnings at the end and writes them to
  ``metrics.json`` as ``warnings`` (:func:`report`);
- loading the checkpoint (``mbtasks.load``, ``mode=predict`` / ``test`` / ``export``) warns again,
  without any data (:func:`warn_loaded`).

A checkpoint written before these checks existed has no ``health`` entry: nothing is said about it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mbtasks import checkpoint as ckpt_format

log = logging.getLogger(__name__)

# the checkpoint's mbtasks-section key holding the warnings
KEY = "health"
# below this many optimizer steps, "too few steps" is the first suspect
FEW_STEPS = 300


@dataclass(frozen=True)
class HealthWarning:
    """One finding: ``name`` (stable, e.g. ``below_majority_class``) and a ``message`` that says what was
    measured, the likely cause and the config key to change."""

    name: str
    message: str

    def text(self) -> str:
        return f"{self.name}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "message": self.message}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> HealthWarning:
        return cls(str(entry.get("name", "unknown")), str(entry.get("message", "")))


@dataclass(frozen=True)
class TrainingFacts:
    """What training looked like, for the likely cause: optimizer ``steps`` so far, whether the backbone
    started from ``pretrained`` weights, and the optimizer's ``lr`` (``None``: not known)."""

    steps: int = 0
    pretrained: bool = False
    lr: float | None = None

    def likely_cause(self) -> str:
        """The likely cause of a useless model, with the keys to change, most likely first."""
        lr = f"optimizer.lr={self.lr:g}" if self.lr is not None else "optimizer.lr"
        short = f"too few training steps ({self.steps}): raise train.time (or trainer.max_epochs without a time budget)"
        high = (
            f"a learning rate too high for pretrained weights: lower {lr} (e.g. 10x) or finetune.lr_mult "
            "(the backbone's share)"
        )
        if self.steps < FEW_STEPS:
            causes = [short, high] if self.pretrained else [short]
        elif self.pretrained:
            causes = [high, short]
        else:
            causes = [short, f"a learning rate that does not suit the data: try another {lr}"]
        return "likely cause: " + "; or ".join(causes)


def facts_of(task) -> TrainingFacts:
    """:class:`TrainingFacts` of a task being trained (its step count, backbone load report, optimizer LR)."""
    report = getattr(task.backbone, "pretrained_report", None)
    lr = getattr(task.optimizer_factory, "keywords", {}).get("lr")
    try:
        steps = int(task.global_step)
    except RuntimeError:  # no trainer attached
        steps = 0
    return TrainingFacts(
        steps=steps, pretrained=bool(report is not None and report.loaded), lr=float(lr) if lr is not None else None
    )


def to_checkpoint(checkpoint: dict, warnings: Sequence[HealthWarning]) -> None:
    """Store ``warnings`` in the checkpoint's mbtasks section (an empty list: checked, nothing found)."""
    ckpt_format.stamp(checkpoint, **{KEY: [w.to_dict() for w in warnings]})


def from_checkpoint(checkpoint: Mapping) -> list[HealthWarning]:
    """The warnings a checkpoint carries (``[]`` for one written before the checks existed)."""
    section = checkpoint.get(ckpt_format.KEY) or {}
    return [HealthWarning.from_dict(e) for e in section.get(KEY) or [] if isinstance(e, Mapping)]


def warn_loaded(task, checkpoint: Mapping, path) -> list[HealthWarning]:
    """On loading a checkpoint: set ``task.health`` from it and log each warning naming the file."""
    task.health = from_checkpoint(checkpoint)
    for w in task.health:
        log.warning("%s: this model may be useless: %s", path, w.text())
    return task.health


def report(task) -> list[str]:
    """At the end of training: log the trained model's warnings (``task.health``: the validation checks of
    the checkpoint just tested) and return their texts for ``metrics.json``'s ``warnings``."""
    texts = [w.text() for w in getattr(task, "health", [])]
    if task._trainer is None or task.trainer.is_global_zero:  # once, not once per DDP rank
        for text in texts:
            log.warning("the trained model may be useless: %s", text)
    return texts
