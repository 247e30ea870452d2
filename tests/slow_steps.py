"""A callback that slows training down, so a test can kill a run between two checkpoints."""

from __future__ import annotations

import time

import lightning as L


class SlowSteps(L.Callback):
    """Sleeps ``seconds`` after every training batch."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = float(seconds)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        time.sleep(self.seconds)


class StopAfterEpoch(L.Callback):
    """Ends fit after epoch ``epoch`` (as a crash would, but with the run finishing cleanly)."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = int(epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True
