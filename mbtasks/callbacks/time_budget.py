"""``train.time``: a wall-clock budget that the run and its LR schedule are sized to (ultralytics' ``time=``).

``trainer.max_time`` alone stops the run wherever the clock runs out, with the LR still
high. This callback times the first steps, then picks the number of optimizer steps that
fits the budget (validation passes included), sets ``max_epochs`` to match and rebuilds the
LR schedule for that horizon, so the cosine ends when the time does. It re-plans after
every validation and every ``replan_every`` steps, as the measured times settle.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any

import lightning as L

from mbtasks.errors import ConfigError

log = logging.getLogger(__name__)

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?)([hms])")


def parse_duration(text: str | int | float) -> float:
    """``"10m"``, ``"90s"``, ``"1h30m"``, ``"1.5h"`` -> seconds.

    Raises:
        ConfigError: anything else (a bare number is refused: its unit would be a guess).
    """
    spec = str(text).strip().lower().replace(" ", "")
    parts = _DURATION.findall(spec)
    if not parts or "".join(n + u for n, u in parts) != spec:
        raise ConfigError(f"train.time={text!r}: expected a duration such as 10m, 90s, 1h30m or 1.5h")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"train.time={text!r}: the budget must be longer than 0 s")
    return seconds


class TimeBudget(L.Callback):
    """Size ``max_epochs`` and the LR schedule so training (with validation) ends at ``time``.

    The plan, in optimizer steps: ``done + remaining_time / (step_time + val_time / steps_per_epoch)``,
    rounded to whole epochs once it spans at least one (a shorter plan stops inside the
    first epoch; Lightning still validates and checkpoints). ``trainer.max_epochs`` is
    replaced by the plan. The time spent and the plan are stored in checkpoints, so a
    resumed run gets the rest of the budget, on the same schedule.

    Args:
        time: the budget (``"10m"``, ``"90s"``, ``"1h30m"``); ``None`` turns the callback off.
        skip_steps: first steps left out of the timing (loader start-up, first allocations).
        measure_steps: steps timed before the first plan (or the first epoch, if shorter).
        replan_every: steps between re-plans inside an epoch.
    """

    def __init__(self, time: str | None = None, skip_steps: int = 2, measure_steps: int = 8,
                 replan_every: int = 20) -> None:
        self.budget = parse_duration(time) if time else None
        self.skip_steps, self.measure_steps, self.replan_every = int(skip_steps), int(measure_steps), int(replan_every)
        self.spent = 0.0  # seconds used by earlier sessions of this run (resume)
        self.total_steps: int | None = None
        self.max_epochs: int | None = None
        self._start: float | None = None
        self._timed_from: tuple[float, int] | None = None  # (clock, global_step) after the skipped steps
        self._val_seconds = 0.0  # validation time since _timed_from
        self._last_val: float | None = None
        self._val_began: float | None = None

    # -- timing -------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # resumed: the fit loop checks max_epochs before on_train_start, so the stored plan goes in now
        if self.budget is not None and self.max_epochs is not None:
            trainer.fit_loop.max_epochs = self.max_epochs

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget is None:
            return
        self._start = time.monotonic()
        self._timed_from, self._val_seconds = None, 0.0
        if self.total_steps is not None:  # resumed: the stored plan, with the restored step count
            self._apply(trainer, pl_module, self.total_steps)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget is not None and not trainer.sanity_checking:
            self._val_began = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget is None or trainer.sanity_checking or self._val_began is None:
            return
        self._last_val = time.monotonic() - self._val_began
        if self._timed_from is not None:
            self._val_seconds += self._last_val
        self._val_began = None
        if self._timed_from is not None and trainer.global_step > self._timed_from[1]:
            self._plan(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.budget is None:
            return
        step = trainer.global_step
        if self._timed_from is None:
            if step >= self.skip_steps or batch_idx + 1 >= trainer.num_training_batches:
                self._timed_from = (time.monotonic(), step)
            return
        timed = step - self._timed_from[1]
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if (self.total_steps is None and (timed >= self.measure_steps or last_of_epoch)) or (
                timed > 0 and timed % self.replan_every == 0):
            self._plan(trainer, pl_module)
        if self.total_steps is not None and step >= self.total_steps:
            trainer.should_stop = True

    # -- planning -----------------------------------------------------------------------

    def _steps_per_epoch(self, trainer: L.Trainer) -> int:
        return max(1, int(trainer.num_training_batches) // max(1, int(trainer.accumulate_grad_batches)))

    def _plan(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.monotonic()
        clock, step0 = self._timed_from
        done = trainer.global_step
        if self.total_steps is not None and done >= self.total_steps:
            trainer.should_stop = True  # the cosine has ended: never extend it (the LR would climb back)
            return
        step_time = max(1e-6, (now - clock - self._val_seconds) / max(1, done - step0))
        per_epoch = self._steps_per_epoch(trainer)
        if self._last_val is not None:
            val_time = self._last_val
        else:  # before the first validation: a forward pass costs about a third of a training step
            val_batches = sum(trainer.num_val_batches) if trainer.num_val_batches else 0
            val_time = step_time / 3 * val_batches * max(1, int(trainer.accumulate_grad_batches))
        left = self.budget - self.spent - (now - self._start)
        total = done + max(0, int(left / (step_time + val_time / per_epoch)))
        if total >= per_epoch:
            total = max(1, round(total / per_epoch)) * per_epoch
        total = int(trainer.strategy.broadcast(max(total, done), src=0))
        if total != self.total_steps:
            log.info("train.time: %.0f s left, %.2f s per step, %.1f s per validation: %d steps (%.1f epochs of %d)",
                     left, step_time, val_time, total, total / per_epoch, per_epoch)
            self._apply(trainer, pl_module, total)
        if done >= total:
            trainer.should_stop = True

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule, total: int) -> None:
        """Set ``max_epochs`` and rebuild the LR schedule for ``total`` steps, at the current step."""
        self.total_steps = int(total)
        per_epoch = self._steps_per_epoch(trainer)
        self.max_epochs = max(1, math.ceil(self.total_steps / per_epoch))
        trainer.fit_loop.max_epochs = self.max_epochs
        factory = getattr(pl_module, "scheduler_factory", None)
        if factory is None or not trainer.lr_scheduler_configs:
            return
        config = trainer.lr_scheduler_configs[0]
        # last_epoch = steps taken - 1: the new schedule starts where the old one is, at this step's LR.
        try:
            config.scheduler = factory(config.scheduler.optimizer, total_steps=self.total_steps,
                                       steps_per_epoch=per_epoch, last_epoch=trainer.global_step - 1)
        except TypeError as err:
            raise ConfigError(f"train.time: the scheduler factory {factory} must take (optimizer, total_steps, "
                              f"steps_per_epoch, last_epoch) to be re-sized ({err})") from err

    # -- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self.budget is None:
            return {}
        used = self.spent + (time.monotonic() - self._start if self._start is not None else 0.0)
        return {"spent": float(used), "total_steps": self.total_steps, "max_epochs": self.max_epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.spent = float(state_dict["spent"])
            self.total_steps = state_dict["total_steps"]
            self.max_epochs = state_dict["max_epochs"]
