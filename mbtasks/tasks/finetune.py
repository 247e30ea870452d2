"""Fine-tuning a pretrained backbone (``conf/finetune``): freeze it, unfreeze it later, scale its LR.

``backbone.pretrained`` (what weights) belongs to the backbone's constructor; how those weights are
then trained is this object's job, given to the task.
"""

from __future__ import annotations

from dataclasses import dataclass

from mbtasks.errors import ConfigError


@dataclass(frozen=True)
class FineTune:
    """How the backbone trains.

    Args:
        freeze: frozen backbone (no gradients, BatchNorm in eval) until ``unfreeze_at_epoch``.
        unfreeze_at_epoch: first epoch (0-based) that trains the backbone; ``None`` keeps a frozen
            backbone frozen for the whole run.
        lr_mult: the backbone's LR = the optimizer's LR x ``lr_mult`` (e.g. 0.1 on pretrained weights).
        freeze_bn: the backbone's BatchNorm layers normalise with their (pretrained) running statistics
            and never update them, also once the backbone trains (small batches give noisy statistics).
        unfold_bn: before training, give the backbone's BatchNorm layers the statistics of the training
            data without changing the network's function (weights with BatchNorm folded in, TFLite).
    """

    freeze: bool = False
    unfreeze_at_epoch: int | None = None
    lr_mult: float = 1.0
    freeze_bn: bool = False
    unfold_bn: bool = False

    def __post_init__(self) -> None:
        epoch = self.unfreeze_at_epoch
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            raise ConfigError(f"finetune.unfreeze_at_epoch={epoch!r}: expected an epoch >= 0 or null")
        if isinstance(self.lr_mult, bool) or not isinstance(self.lr_mult, int | float) or self.lr_mult < 0:
            raise ConfigError(f"finetune.lr_mult={self.lr_mult!r}: expected a number >= 0 (e.g. 0.1)")
        object.__setattr__(self, "freeze", bool(self.freeze))
        object.__setattr__(self, "freeze_bn", bool(self.freeze_bn))
        object.__setattr__(self, "unfold_bn", bool(self.unfold_bn))
        object.__setattr__(self, "lr_mult", float(self.lr_mult))

    def frozen_at(self, epoch: int) -> bool:
        return self.freeze and (self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch)
