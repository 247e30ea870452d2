"""The progress bar: Lightning's rich bar, redrawn at most every ``min_interval_s`` and steady under ``train.time``."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import RichProgressBar

from mbtasks.callbacks.time_budget import TimeBudget, format_seconds


class RunProgressBar(RichProgressBar):
    """``RichProgressBar`` that

    - in a ``train.time`` run shows the time used of the budget ("Epoch 3 · 1m12s of 5m00s") instead
      of an epoch total that changes with every re-plan;
    - redraws the training bar at most every ``min_interval_s`` seconds (and on an epoch's last
      batch): each redraw reads the step's logged values (a device sync on a GPU) and renders, a
      cost a fast loop would otherwise pay every step.

    Args:
        min_interval_s: least time between two redraws of the training bar; 0: every batch.
        Other arguments: :class:`~lightning.pytorch.callbacks.RichProgressBar`'s.
    """

    def __init__(self, *args, min_interval_s: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.min_interval_s = float(min_interval_s)
        self._drawn = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if (
            now - self._drawn < self.min_interval_s
            and batch_idx + 1 < self.total_train_batches
            and not trainer.should_stop
        ):
            return
        self._drawn = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _get_train_description(self, current_epoch: int) -> str:
        budget = next((c for c in self.trainer.callbacks if isinstance(c, TimeBudget) and c.budget is not None), None)
        if budget is None:
            return super()._get_train_description(current_epoch)
        text = f"Epoch {current_epoch} · {format_seconds(budget.elapsed())} of {format_seconds(budget.budget)}"
        return f"{text:{len(self.validation_description)}}"
