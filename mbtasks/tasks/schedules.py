"""Learning-rate schedules, stepped once per optimizer step.

Each factory takes ``(optimizer, total_steps, steps_per_epoch, last_epoch=-1)`` so configs can
say "epochs" while Lightning steps the scheduler every batch; ``last_epoch`` (steps taken - 1)
starts a schedule part-way, as ``train.time`` does when it re-sizes the run.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 1.0, min_lr_ratio: float = 0.01,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warm-up from ~0 over ``warmup_epochs``, then cosine decay to ``min_lr_ratio * lr``."""
    warmup = min(int(warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor, last_epoch=last_epoch)


def step_decay(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int, decay_epochs: float = 2.0, gamma: float = 0.94,
    last_epoch: int = -1,
) -> LambdaLR:
    """The MobileNet paper's "learning rate decay": multiply by ``gamma`` every ``decay_epochs``."""
    period = max(1, int(round(decay_epochs * steps_per_epoch)))
    return LambdaLR(optimizer, lambda step: gamma ** (step // period), last_epoch=last_epoch)


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, last_epoch: int = -1) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: 1.0, last_epoch=last_epoch)
