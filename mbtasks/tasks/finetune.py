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
        freeze: frozen backbone (no gradients, BatchNorm in eval) until ``unfreeze_at_epoch`` or
            ``unfreeze_at_share``, whichever comes first.
        unfreeze_at_epoch: first epoch (0-based) that trains the backbone; ``None`` keeps a frozen
            backbone frozen for the whole run (unless ``unfreeze_at_share`` ends it).
        unfreeze_at_share: the backbone trains from this share of the planned steps on at the latest
            (e.g. 0.1), however long an epoch is: on a large set one epoch can be most of a
            ``train.time`` budget. ``None``: epochs only.
        lr_mult: the backbone's LR = the optimizer's LR x ``lr_mult`` (e.g. 0.1 on pretrained weights).
        freeze_bn: the backbone's BatchNorm layers normalise with their (pretrained) running statistics
            and never update them, also once the backbone trains (small batches give noisy statistics).
        unfold_bn: before training, give the backbone's BatchNorm layers the statistics of the training
            data without changing the network's function (weights with BatchNorm folded in, TFLite).
    """

    freeze: bool = False
    unfreeze_at_epoch: int | None = None
    unfreeze_at_share: float | None = None
    lr_mult: float = 1.0
    freeze_bn: bool = False
    unfold_bn: bool = False

    def __post_init__(self) -> None:
        epoch = self.unfreeze_at_epoch
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            raise ConfigError(f"finetune.unfreeze_at_epoch={epoch!r}: expected an epoch >= 0 or null")
        share = self.unfreeze_at_share
        if share is not None and (isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < 1):
            raise ConfigError(
                f"finetune.unfreeze_at_share={share!r}: expected a share of the planned steps in (0, 1) "
                "(e.g. 0.1) or null"
            )
        if isinstance(self.lr_mult, bool) or not isinstance(self.lr_mult, int | float) or self.lr_mult < 0:
            raise ConfigError(f"finetune.lr_mult={self.lr_mult!r}: expected a number >= 0 (e.g. 0.1)")
        object.__setattr__(self, "freeze", bool(self.freeze))
        object.__setattr__(self, "freeze_bn", bool(self.freeze_bn))
        object.__setattr__(self, "unfold_bn", bool(self.unfold_bn))
        object.__setattr__(self, "lr_mult", float(self.lr_mult))
        if share is not None:
            object.__setattr__(self, "unfreeze_at_share", float(share))

    @property
    def unfreezes(self) -> bool:
        """A frozen backbone is unfrozen at some point of the run."""
        return self.freeze and (self.unfreeze_at_epoch is not None or self.unfreeze_at_share is not None)

    def frozen_at(self, epoch: int, step: int = 0, planned_steps: int | None = None) -> bool:
        """Whether the backbone is frozen in ``epoch`` at global ``step`` of ``planned_steps`` (``None``:
        not known yet, e.g. before ``train.time`` has timed its first steps)."""
        if not self.freeze:
            return False
        if self.unfreeze_at_epoch is not None and epoch >= self.unfreeze_at_epoch:
            return False
        share = self.unfreeze_at_share
        return not (share is not None and planned_steps is not None and step >= share * planned_steps)
