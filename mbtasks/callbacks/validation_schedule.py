"""When validation runs: every ``k`` epochs, and always on the run's final epoch.

Lightning validates (and, with ``check_val_every_n_epoch`` > 1, checkpoints) only on epochs that
are multiples of ``check_val_every_n_epoch``: a run of 8 epochs validated every 5 ends with
``best.ckpt`` and ``last.ckpt`` at epoch 4, and the last epochs' training is lost to the test,
export and resume. This callback decides epoch by epoch instead, and validates the final epoch
too, however the run ends (``max_epochs``, ``max_steps``, or a callback stopping it, e.g. ``train.time``).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class ValidationSchedule(L.Callback):
    """Validate every ``every`` epochs (counted from the last validation) and on the final epoch.

    ``every`` starts as ``trainer.check_val_every_n_epoch``; :class:`~mbtasks.callbacks.TimeBudget`
    changes it to keep validation within its share of a budget. Lightning's own schedule is left
    alone when validation is off or counted in batches (``check_val_every_n_epoch=null``).
    """

    def __init__(self) -> None:
        self.every: int | None = None
        self.configured: int | None = None  # the trainer's check_val_every_n_epoch, restored at the end
        self.last_validated = -1  # epoch of the last validation (kept in checkpoints)
        self._active = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.configured = trainer.check_val_every_n_epoch
        self._active = False
        if self.every is None and self.configured is not None:
            self.every = int(self.configured)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active:
            trainer.check_val_every_n_epoch = self.configured

    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` validates on the regular schedule (without being the last)."""
        return epoch - self.last_validated >= max(1, int(self.every or 1))

    @staticmethod
    def _validate_epoch(trainer: L.Trainer, yes: bool) -> None:
        # Lightning validates epoch e when (e + 1) % check_val_every_n_epoch == 0: 1 says yes, e + 2 no.
        # With 1, ModelCheckpoint saves at the epoch's end (after epochs.jsonl has its line), as with
        # check_val_every_n_epoch=1: a checkpoint written at the validation's end would resume inside the
        # epoch's end and lose that line. With e + 2 it writes nothing (nothing was validated).
        trainer.check_val_every_n_epoch = 1 if yes else trainer.current_epoch + 2

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # without validation, ModelCheckpoint saves at every epoch's end only while the value is 1: leave it
        self._active = (
            self.configured is not None
            and trainer.enable_validation
            and getattr(trainer, "_val_check_time_interval", None) is None
        )
        if self._active:
            self._validate_epoch(trainer, self.due(trainer.current_epoch))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        # decided again after every batch: ``every`` may have changed, and the run may be ending here.
        # Lightning reads the value after the last batch (or a stop); ModelCheckpoint until the epoch's end.
        if not self._active:
            return
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        ending = (
            trainer.should_stop
            or (last_batch and trainer.current_epoch + 1 >= (trainer.max_epochs or 0) > 0)
            or (0 < trainer.max_steps <= trainer.global_step)
        )
        # the final epoch always: its weights reach last.ckpt (and best.ckpt if best)
        self._validate_epoch(trainer, ending or self.due(trainer.current_epoch))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.last_validated = trainer.current_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"last_validated": self.last_validated}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_validated = int(state_dict.get("last_validated", -1))
