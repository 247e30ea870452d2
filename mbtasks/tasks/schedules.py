"""Learning-rate schedules, stepped once per optimizer step.

Each factory takes ``(optimizer, total_steps, steps_per_epoch, last_epoch=-1, plans=())`` so
configs can say "epochs" while Lightning steps the scheduler every batch. ``last_epoch`` (steps
taken - 1) starts a schedule part-way, and ``plans`` lists the run lengths in force so far, as
``train.time`` re-sizes the run: the LR of the steps already taken stays what it was, and the
rest of the schedule continues from there (see :func:`cosine_with_warmup`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

Plans = Sequence[tuple[int, int]]


def cosine_phase(plans: Plans, warmup: int) -> tuple[int, list[tuple[int, float]]]:
    """Where the warm-up ends, and the cosine's phase (0..1) at the knots of a run re-sized by ``plans``.

    Args:
        plans: ``(step, total_steps)`` of each plan, oldest first, each in force from its step on
            (the first from step 0).
        warmup: the warm-up's full length in steps.

    Returns:
        ``(end, knots)``: the warm-up ends at step ``end`` (earlier than ``warmup`` when the plan in
        force then was shorter); ``knots`` are ``(step, phase)`` points, the phase linear between
        them and reaching 1 at the last plan's total. A re-plan keeps the phase the old plan had
        reached at its step and stretches or shrinks only the rest: the LR never jumps, and never
        climbs back up once the decay has begun.
    """
    end, first = None, 0
    for i, (start, total) in enumerate(plans):
        until = plans[i + 1][0] if i + 1 < len(plans) else math.inf
        candidate = max(int(start), min(warmup, int(total) - 1))
        if candidate < until:
            end, first = candidate, i
            break
    knots = [(end, 0.0)]
    total = int(plans[first][1])
    for start, next_total in plans[first + 1 :]:
        s0, q0 = knots[-1]
        knots.append((int(start), q0 + (1 - q0) * min(1.0, (start - s0) / max(1, total - s0))))
        total = int(next_total)
    knots.append((max(total, knots[-1][0]), 1.0))
    return end, knots


def cosine_with_warmup(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    min_lr_ratio: float = 0.01,
    last_epoch: int = -1,
    plans: Plans = (),
) -> LambdaLR:
    """Linear warm-up from ~0 over ``warmup_epochs``, then cosine decay to ``min_lr_ratio * lr``.

    A run shorter than its warm-up warms up at the same slope and decays from where it got to, so
    the first steps' LR does not depend on the run's length (``train.time`` plans it after them).
    ``plans``: the ``(step, total_steps)`` plans in force so far (:func:`cosine_phase`); default one
    plan, ``total_steps`` from step 0.
    """
    full = int(warmup_epochs * steps_per_epoch)
    plans = [(int(s), int(t)) for s, t in plans] or [(0, int(total_steps))]
    if plans[-1][1] != int(total_steps):
        plans.append((max(last_epoch + 1, 0), int(total_steps)))
    end, knots = cosine_phase(plans, full)
    steps = [s for s, _ in knots]
    peak = min(1.0, (end + 1) / (full + 1))  # 1 unless the run is shorter than the warm-up
    floor = min(min_lr_ratio, peak)

    def factor(step: int) -> float:
        if step < end:
            return min(1.0, (step + 1) / (full + 1))
        if step >= steps[-1]:  # the end of the plan (also when a re-plan ended it at its own step)
            return floor
        i = bisect.bisect_right(steps, step) - 1
        (s0, q0), (s1, q1) = knots[i], knots[i + 1]
        phase = min(1.0, q0 + (q1 - q0) * (step - s0) / max(1, s1 - s0))
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * phase))

    return LambdaLR(optimizer, factor, last_epoch=last_epoch)


def step_decay(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    decay_epochs: float = 2.0,
    gamma: float = 0.94,
    last_epoch: int = -1,
    plans: Plans = (),
) -> LambdaLR:
    """The MobileNet paper's "learning rate decay": multiply by ``gamma`` every ``decay_epochs``
    (the run's length, hence ``plans``, does not change it)."""
    period = max(1, int(round(decay_epochs * steps_per_epoch)))
    return LambdaLR(optimizer, lambda step: gamma ** (step // period), last_epoch=last_epoch)


def constant(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int, last_epoch: int = -1, plans: Plans = ()
) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: 1.0, last_epoch=last_epoch)
