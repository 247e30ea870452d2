"""Stop training at the first non-finite loss, naming step, epoch and loss terms."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from mbtasks.errors import NonFiniteLossError


def format_terms(terms: Mapping[str, Any]) -> str:
    parts = []
    for key, value in terms.items():
        v = float(value.detach().float().item() if isinstance(value, torch.Tensor) else value)
        parts.append(f"{key}={v:.4g}")
    return ", ".join(parts)


def non_finite_loss_error(step: int, epoch: int, terms: Mapping[str, Any]) -> NonFiniteLossError:
    """The error for a loss that is NaN or infinite at ``step``, listing every term."""
    return NonFiniteLossError(
        f"training loss is not finite at global step {step} (epoch {epoch}): {format_terms(terms)}. "
        "Lower optimizer.lr, set trainer.gradient_clip_val, or check the data of this step"
    )


def is_finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return math.isfinite(float(value))


class FiniteLoss(L.Callback):
    """Raises :class:`~mbtasks.errors.NonFiniteLossError` when a training step returns a non-finite loss.

    Tasks check their own loss terms before logging (``BaseTask.check_finite``); this
    callback is the net under any task that does not, and looks at the returned loss.
    The checkpoint callbacks do not save on an exception, so ``last.ckpt`` stays the last
    good one.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None or is_finite(loss):
            return
        terms = {"loss": loss}
        terms.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/") and k != "train/loss"})
        raise non_finite_loss_error(trainer.global_step, trainer.current_epoch, terms)
