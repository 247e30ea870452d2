"""``train.time``: a wall-clock budget that the run, its validation and its LR schedule are sized to
(ultralytics' ``time=``).

``trainer.max_time`` alone stops the run wherever the clock runs out, with the LR still high.
This callback times the first few steps, then plans the number of optimizer steps that fits the
budget, validation included, sets ``max_epochs`` to match and re-sizes the LR schedule for that
horizon, so the cosine ends when the time does. It re-plans after every validation and every
``replan_every`` steps as the measured times settle.

- Validation costs at most ``val_share`` of the budget (``train.val_share``): it runs every ``k`` epochs,
  ``k`` set from the measured step and validation times (never below ``trainer.check_val_every_n_epoch``),
  and always on the final epoch (:class:`~mbtasks.callbacks.ValidationSchedule`), so ``last.ckpt``
  holds the last step's weights and ``best.ckpt`` gets them whenever they are best.
- The plan charges exactly the validations that will run; it ends on a whole epoch unless that
  would leave more than 2.5% of the budget unused (then it stops inside the last epoch, which is
  validated and checkpointed all the same).
- Each re-plan keeps the LR of the steps already taken and re-sizes only the rest of the
  schedule (``plans`` of :mod:`mbtasks.tasks.schedules`): the LR never jumps, never climbs back up,
  and every step's LR is the one the final plan's curve gives it.
- At the end it logs where the time went: training steps, validation, everything else.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L

from mbtasks.callbacks.validation_schedule import ValidationSchedule
from mbtasks.errors import ConfigError
from mbtasks.settings import Settings, setting

log = logging.getLogger(__name__)

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?)([hms])")
# the schedule in force while the first steps are timed: warm-up as usual, no decay yet
_OPEN_ENDED = 2**31 - 1


def parse_duration(text: str | int | float) -> float:
    """``"10m"``, ``"90s"``, ``"1h30m"``, ``"1.5h"`` -> seconds.

    Raises:
        ConfigError: anything else (a bare number, 0 included, is refused: its unit would be a guess;
            ``train.time=null`` turns the budget off).
    """
    spec = str(text).strip().lower().replace(" ", "")
    parts = _DURATION.findall(spec)
    if not parts or "".join(n + u for n, u in parts) != spec:
        raise ConfigError(f"train.time={text!r}: expected a duration such as 10m, 90s, 1h30m or 1.5h (null: no budget)")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"train.time={text!r}: the budget must be longer than 0 s (null: no budget)")
    return seconds


@dataclass(frozen=True, kw_only=True)
class BudgetSettings(Settings):
    """``train.time`` and ``train.val_share``, the keys of the ``train:`` block this callback takes
    (:class:`~mbtasks.modes.train.TrainSettings` adds the mode's own)."""

    section: ClassVar[str] = "train"
    # a duration (parse_duration); null: no budget
    time: str | None = setting(number=False, optional=True)
    # 1 would leave the whole budget to validation
    val_share: float | None = setting(
        low=0,
        low_in=False,
        high=1,
        high_in=False,
        optional=True,
        example="0.1, or null: validate every trainer.check_val_every_n_epoch epochs",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.time is not None:  # 0 too: refused, not "no budget"
            parse_duration(self.time)

    @property
    def seconds(self) -> float | None:
        """The budget in seconds (None: no budget)."""
        return None if self.time is None else parse_duration(self.time)


def format_seconds(seconds: float) -> str:
    """``75.3`` -> ``"1m15s"``."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return (f"{h}h{m:02d}m" if h else "") + (f"{m}m{s:02d}s" if m and not h else "") + ("" if h or m else f"{s}s")


def validations_left(final_epoch: int, last_validated: int, every: int) -> int:
    """Validations from now to the end of ``final_epoch``: every ``every`` epochs after ``last_validated``,
    and the final epoch (the rule of :class:`~mbtasks.callbacks.ValidationSchedule`)."""
    if final_epoch <= last_validated:
        return 0
    return (final_epoch - 1 - last_validated) // max(1, every) + 1


def plan_steps(
    left: float,
    done: int,
    per_epoch: int,
    step_time: float,
    val_time: float,
    last_validated: int,
    min_every: int,
    val_allowed: int | None,
    budget: float,
) -> tuple[int, int]:
    """The optimizer steps that fit ``left`` seconds, and the validation interval in epochs.

    Args:
        left: seconds left in the budget.
        done: optimizer steps taken.
        per_epoch: optimizer steps per epoch.
        step_time: seconds per step (data waits and epoch-end work included, validation not).
        val_time: seconds per validation (its checkpoint writes included).
        last_validated: the epoch last validated (-1: none).
        min_every: validate at most every ``min_every`` epochs (``trainer.check_val_every_n_epoch``).
        val_allowed: validations the rest of the budget may hold (``None``: every ``min_every`` epochs).
        budget: the whole budget (seconds), for the whole-epoch rounding rule.

    Returns:
        ``(total_steps, every)``: the plan, and validation every ``every`` epochs (plus the final epoch).
    """
    epoch = done // per_epoch  # the epoch the next step belongs to

    def every_for(final: int) -> int:
        if val_allowed is None or val_time <= 0:
            return min_every
        return max(min_every, math.ceil((final - last_validated) / max(1, val_allowed)))

    def cost(total: int, final: int) -> float:
        return (total - done) * step_time + validations_left(final, last_validated, every_for(final)) * val_time

    def fits(epochs: int) -> bool:
        return cost(epochs * per_epoch, epochs - 1) <= left

    # the largest whole number of epochs that fits: bisection (the cost grows with the epochs but for
    # a validation more or less as the interval is re-chosen), then a look a little further
    best = None
    if fits(epoch + 1):
        low, high = epoch + 1, epoch + 2 + int(left / max(step_time * per_epoch, 1e-9))
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        ahead = min(1000, 2 + int(val_time / max(step_time * per_epoch, 1e-9)))
        best = max([low] + [e for e in range(low + 1, low + 1 + ahead) if fits(e)])
    if best is None:  # not even the current epoch fits: stop inside it
        final = epoch
        room = left - validations_left(final, last_validated, every_for(final)) * val_time
        total = min(done + max(0, int(room / step_time)), (epoch + 1) * per_epoch)
        return max(done, total), every_for(final)
    total, final = best * per_epoch, best - 1
    # a partial last epoch when stopping on a whole one would leave more than 2.5% of the budget unused
    room = left - validations_left(best, last_validated, every_for(best)) * val_time
    partial = min(done + int(room / step_time), (best + 1) * per_epoch - 1) if room > 0 else total
    if partial > total and (partial - total) * step_time > 0.025 * budget:
        total, final = partial, best
    return max(done, total), every_for(final)


class TimeBudget(L.Callback):
    """Size ``max_epochs``, validation and the LR schedule so training ends at ``time``.

    The time spent, the plan and its history are stored in checkpoints, so a resumed run gets the
    rest of the budget, on the same schedule.

    Args:
        time: the budget (``"10m"``, ``"90s"``, ``"1h30m"``); ``None`` turns the callback off.
        val_share: the largest share of the budget validation may take (``None``: validate every
            ``trainer.check_val_every_n_epoch`` epochs, and the final one, whatever it costs).
        skip_steps: first steps left out of the timing (loader start-up, first allocations).
        measure_steps: steps timed before the first plan (epochs may end meanwhile; validation is left out).
        replan_every: steps between re-plans (and at least every 5% of the budget).
    """

    def __init__(
        self,
        time: str | None = None,
        # the default of run configs written before train.val_share was a key (the config names it now)
        val_share: float | None = 0.1,
        skip_steps: int = 2,
        measure_steps: int = 3,
        replan_every: int = 20,
    ) -> None:
        settings = BudgetSettings(time=time, val_share=val_share)
        self.budget = settings.seconds
        self.val_share = None if val_share is None else float(val_share)
        self.skip_steps, self.measure_steps, self.replan_every = int(skip_steps), int(measure_steps), int(replan_every)
        # kept in checkpoints
        self.spent = 0.0  # seconds used by earlier sessions of this run (resume)
        self.total_steps: int | None = None
        self.max_epochs: int | None = None
        self.val_every: int | None = None
        self.plans: list[tuple[int, int]] = []  # (step, total_steps) of every plan, for the LR schedule
        self.earlier = {"steps_s": 0.0, "val_s": 0.0, "val_cost_s": 0.0, "validations": 0, "steps": 0}
        # this session
        self._start: float | None = None
        self._timed_from: tuple[float, int] | None = None  # (clock, global_step) after the skipped steps
        self._windows = 0.0  # validation windows (validation + checkpoint writes) since _timed_from
        self._val_began: float | None = None  # an open validation window
        self._val_loop = 0.0  # the open window's validation loop time
        self._val_extra = 0.0  # checkpoint writes etc. after the last validation loop
        self._val_cost: float | None = None  # the last validation's cost (loop + extra)
        self._batch_began = 0.0
        self._session = {"steps_s": 0.0, "val_s": 0.0, "val_cost_s": 0.0, "validations": 0, "steps": 0}
        self._logged_total: int | None = None
        self._planned_at = 0.0
        self._schedule: ValidationSchedule | None = None

    # -- clock ----------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds of the budget used so far (earlier sessions included)."""
        return self.spent + (time.monotonic() - self._start if self._start is not None else 0.0)

    def _close_val_window(self, now: float) -> None:
        if self._val_began is None:
            return
        window = now - self._val_began
        self._val_extra = max(0.0, window - self._val_loop)
        self._session["val_cost_s"] += window
        if self._timed_from is not None:
            self._windows += window
        self._val_began = None

    # -- hooks ------------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # resumed: the fit loop checks max_epochs before on_train_start, so the stored plan goes in now
        if self.budget is not None and self.max_epochs is not None:
            trainer.fit_loop.max_epochs = self.max_epochs

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget is None:
            return
        self._start = time.monotonic()
        self._timed_from, self._windows, self._val_began = None, 0.0, None
        self._schedule = next((c for c in trainer.callbacks if isinstance(c, ValidationSchedule)), None)
        if self._schedule is None:
            log.warning(
                "train.time: no ValidationSchedule callback: validation follows "
                "trainer.check_val_every_n_epoch and is charged as such"
            )
        if self.total_steps is not None:  # resumed: the stored plan, with the restored step count
            self.plans = self.plans or [(0, self.total_steps)]  # a checkpoint from before plans were kept
            self._apply(trainer, pl_module, self.total_steps, record=False)
            if self._schedule is not None and self.val_every is not None:
                self._schedule.every = self.val_every
        else:  # warm up as usual while the first steps are timed (epochs may end); the cosine starts with the plan
            self.plans = self.plans or [(trainer.global_step, _OPEN_ENDED)]
            trainer.fit_loop.max_epochs = _OPEN_ENDED
            self._rebuild_schedule(trainer, pl_module, _OPEN_ENDED)
        rule = (
            f"at most {self.val_share:.0%} of it (train.val_share): every k epochs, k from the measured step "
            "and validation times"
            if self.val_share is not None
            else f"every {trainer.check_val_every_n_epoch} epochs (trainer.check_val_every_n_epoch)"
        )
        log.info(
            "train.time=%s: validation takes %s, and always the final epoch; the plan comes after %d timed steps",
            format_seconds(self.budget),
            rule,
            self.skip_steps + self.measure_steps,
        )

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.budget is None:
            return
        self._batch_began = time.monotonic()
        self._close_val_window(self._batch_began)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self.budget is None:
            return
        now = time.monotonic()
        self._session["steps_s"] += now - self._batch_began
        self._session["steps"] += 1
        step = trainer.global_step
        if self._timed_from is None:
            if step >= self.skip_steps:
                self._timed_from, self._windows = (now, step), 0.0
            return
        timed = step - self._timed_from[1]
        if self.total_steps is None:
            due = timed >= self.measure_steps
        else:  # every replan_every steps, and every 5% of the budget (short budgets, slow steps)
            due = timed % self.replan_every == 0 or now - self._planned_at >= 0.05 * self.budget
        if due:
            self._plan(trainer, pl_module)
        if self.total_steps is not None and step >= self.total_steps:
            trainer.should_stop = True

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget is not None and not trainer.sanity_checking:
            self._val_began = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget is None or trainer.sanity_checking or self._val_began is None:
            return
        self._val_loop = time.monotonic() - self._val_began
        self._session["val_s"] += self._val_loop
        self._session["validations"] += 1
        # what follows the loop (checkpoint writes) is measured when training resumes; the last one's stands in
        self._val_cost = self._val_loop + self._val_extra
        if self._timed_from is not None and trainer.global_step > self._timed_from[1]:
            self._plan(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget is None or self._start is None:
            return
        self._close_val_window(time.monotonic())
        if trainer.is_global_zero:
            log.info("train.time: %s", self.split_line())

    # -- planning -----------------------------------------------------------------------------

    def _steps_per_epoch(self, trainer: L.Trainer) -> int:
        # as Lightning counts them (estimated_stepping_batches): a last partial accumulation steps too
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            return _OPEN_ENDED
        return max(1, math.ceil(int(batches) / max(1, int(trainer.accumulate_grad_batches))))

    def _val_estimate(self, trainer: L.Trainer, step_time: float) -> float:
        """Before the first validation: a forward pass costs about a third of a training step."""
        batches = sum(trainer.num_val_batches) if trainer.num_val_batches else 0
        if not batches and trainer.datamodule is not None and trainer.limit_val_batches != 0:
            try:
                batches = len(trainer.datamodule.val_dataloader())
            except Exception:  # noqa: BLE001 - an estimate only; the first validation measures it
                batches = 0
            limit = trainer.limit_val_batches
            batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * float(limit or 1.0))
        return step_time / 3 * batches * max(1, int(trainer.accumulate_grad_batches))

    def _plan(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = self._planned_at = time.monotonic()
        done = trainer.global_step
        if self.total_steps is not None and done >= self.total_steps:
            trainer.should_stop = True  # the cosine has ended: never extend it
            return
        clock, step0 = self._timed_from
        open_window = now - self._val_began if self._val_began is not None else 0.0
        step_time = max(1e-6, (now - clock - self._windows - open_window) / max(1, done - step0))
        per_epoch = self._steps_per_epoch(trainer)
        measured = self._val_cost is not None
        val_time = self._val_cost if measured else self._val_estimate(trainer, step_time)
        left = self.budget - self.elapsed()
        schedule = self._schedule
        last_validated = schedule.last_validated if schedule is not None else -1
        min_every = int(trainer.check_val_every_n_epoch or 1) if schedule is None else int(schedule.configured or 1)
        val_allowed = None
        if self.val_share is not None and schedule is not None and val_time > 0:
            val_spent = self.earlier["val_cost_s"] + self._session["val_cost_s"] + open_window
            val_allowed = max(1, int((self.val_share * self.budget - val_spent) / val_time))
        total, every = plan_steps(
            left, done, per_epoch, step_time, val_time, last_validated, min_every, val_allowed, self.budget
        )
        if (
            self.total_steps is not None
            and total > self.total_steps
            and (total - self.total_steps) * step_time < 0.01 * self.budget
        ):
            total = self.total_steps  # a growth within the timing noise: keep the plan (and the schedule) as is
        total, every = trainer.strategy.broadcast((int(total), int(every)), src=0)
        if schedule is not None:
            schedule.every = self.val_every = every
        if total != self.total_steps:
            self._log_plan(left, step_time, val_time, measured, total, per_epoch, every, last_validated)
            self._apply(trainer, pl_module, total)
        if done >= total:
            trainer.should_stop = True

    def _log_plan(
        self,
        left: float,
        step_time: float,
        val_time: float,
        measured: bool,
        total: int,
        per_epoch: int,
        every: int,
        last_validated: int,
    ) -> None:
        # the first plan, and then only changes of 5% or more, at INFO (one-batch epochs re-plan often)
        loud = self._logged_total is None or abs(total - self._logged_total) >= 0.05 * self._logged_total
        vals = validations_left(math.ceil(total / per_epoch) - 1, last_validated, every)
        log.log(
            logging.INFO if loud else logging.DEBUG,
            "train.time: %s left, %.3g s per step, %.3g s per validation (%s): %d steps (%.1f epochs of %d), "
            "validation every %d epochs and at the end (%d more, %s)",
            format_seconds(left),
            step_time,
            val_time,
            "measured" if measured else "estimated",
            total,
            total / per_epoch,
            per_epoch,
            every,
            vals,
            format_seconds(vals * val_time),
        )
        if loud:
            self._logged_total = total

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule, total: int, record: bool = True) -> None:
        """Set ``max_epochs`` and re-size the LR schedule for ``total`` steps, from the current step on."""
        self.total_steps = int(total)
        if record:
            self.plans.append((int(trainer.global_step), self.total_steps))
        self.max_epochs = max(1, math.ceil(self.total_steps / self._steps_per_epoch(trainer)))
        trainer.fit_loop.max_epochs = self.max_epochs
        self._rebuild_schedule(trainer, pl_module, self.total_steps)

    def _rebuild_schedule(self, trainer: L.Trainer, pl_module: L.LightningModule, total: int) -> None:
        factory = getattr(pl_module, "scheduler_factory", None)
        if factory is None or not trainer.lr_scheduler_configs:
            return
        config = trainer.lr_scheduler_configs[0]
        kwargs = {
            "total_steps": total,
            "steps_per_epoch": self._steps_per_epoch(trainer),
            "last_epoch": trainer.global_step - 1,
        }  # the new schedule starts at this step
        if _takes(factory, "plans"):  # the LR of the steps taken stays as it was (schedules.py)
            kwargs["plans"] = list(self.plans)
        try:
            config.scheduler = factory(config.scheduler.optimizer, **kwargs)
        except TypeError as err:
            raise ConfigError(
                f"train.time: the scheduler factory {factory} must take (optimizer, total_steps, "
                f"steps_per_epoch, last_epoch[, plans]) to be re-sized ({err})"
            ) from err

    # -- the split ----------------------------------------------------------------------------

    def split(self) -> dict[str, float]:
        """Seconds used in training steps, in validation, and in everything else (all sessions)."""
        total = self.elapsed()
        steps = self.earlier["steps_s"] + self._session["steps_s"]
        val = self.earlier["val_s"] + self._session["val_s"]
        return {
            "total_s": total,
            "steps_s": steps,
            "val_s": val,
            "other_s": max(0.0, total - steps - val),
            "steps": self.earlier["steps"] + self._session["steps"],
            "validations": self.earlier["validations"] + self._session["validations"],
        }

    def split_line(self) -> str:
        s = self.split()
        share = {k: s[k] / s["total_s"] if s["total_s"] > 0 else 0.0 for k in ("steps_s", "val_s", "other_s")}
        return (
            f"{format_seconds(s['total_s'])} of {format_seconds(self.budget)} used: "
            f"{share['steps_s']:.0%} in training steps ({s['steps']} steps, {format_seconds(s['steps_s'])}), "
            f"{share['val_s']:.0%} in validation ({s['validations']} passes, {format_seconds(s['val_s'])}), "
            f"{share['other_s']:.0%} else (data waits, checkpoints, logging; {format_seconds(s['other_s'])})"
        )

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self.budget is None:
            return {}
        split = self.split()
        open_window = time.monotonic() - self._val_began if self._val_began is not None else 0.0
        return {
            "spent": float(self.elapsed()),
            "total_steps": self.total_steps,
            "max_epochs": self.max_epochs,
            "val_every": self.val_every,
            "plans": [list(p) for p in self.plans],
            "split": {
                "steps_s": split["steps_s"],
                "val_s": split["val_s"],
                "steps": split["steps"],
                "validations": split["validations"],
                "val_cost_s": self.earlier["val_cost_s"] + self._session["val_cost_s"] + open_window,
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.spent = float(state_dict["spent"])
            self.total_steps = state_dict["total_steps"]
            self.max_epochs = state_dict["max_epochs"]
            self.val_every = state_dict.get("val_every")
            self.plans = [(int(s), int(t)) for s, t in state_dict.get("plans", [])]
            self.earlier.update(state_dict.get("split", {}))


def _takes(fn: Any, name: str) -> bool:
    """Whether ``fn`` (a function or ``functools.partial``) accepts the keyword ``name``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
