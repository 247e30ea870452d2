"""Freeze the shared backbone for transfer learning, and unfreeze it at a chosen epoch or share of the steps.

Lightning's ``BackboneFinetuning`` looks for ``pl_module.backbone``, adds a new optimizer group
when it unfreezes (which LR schedulers built earlier do not step) and keeps frozen BatchNorm
layers in training mode with batch statistics. Here the backbone is ``task.model.backbone``, its
parameters sit in their own optimizer group from the start (``BaseTask.parameter_groups``, LR
scaled by ``finetune.lr_mult``), and a frozen backbone runs entirely in eval mode: BatchNorm
normalises with the pretrained running statistics and does not update them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from mbtasks.callbacks.time_budget import TimeBudget
from mbtasks.errors import ConfigError

log = logging.getLogger(__name__)


def set_frozen(backbone: nn.Module, frozen: bool) -> None:
    """``requires_grad`` off and eval mode (BN uses, never updates, running stats), or back."""
    for p in backbone.parameters():
        p.requires_grad_(not frozen)
    backbone.train(not frozen)


@torch.no_grad()
def unfold_batchnorm(backbone: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Give every BatchNorm of ``backbone`` the statistics of its inputs on ``batches`` without changing
    what the network computes in eval mode; returns how many layers changed.

    Weights with BatchNorm folded into the convolutions (TFLite) leave each BatchNorm the identity
    with running mean 0 / variance 1, while the convolutions' outputs have other statistics: in
    training mode the batch statistics would renormalise them and undo the weights. Here each layer
    ``y = (z - m) / sqrt(v + eps) * w + b`` becomes ``(z - mu) / sqrt(var + eps) * w' + b'`` with the
    measured ``mu`` / ``var`` and ``w' = w sqrt(var + eps) / sqrt(v + eps)``, ``b' = b + w (mu - m) /
    sqrt(v + eps)``: the same function in eval mode, and about the same in training mode.
    """
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    stats: dict[int, list[torch.Tensor]] = {id(m): [] for m in norms}

    def record(module, inputs):
        z = inputs[0].float()
        stats[id(module)].append(torch.stack([z.mean(dim=(0, 2, 3)), (z * z).mean(dim=(0, 2, 3))]))

    hooks = [m.register_forward_pre_hook(record) for m in norms]
    training = backbone.training
    backbone.eval()
    try:
        for images in batches:
            backbone(images)
    finally:
        for h in hooks:
            h.remove()
        backbone.train(training)
    changed = 0
    for m in norms:
        if not stats[id(m)]:
            continue
        first, second = torch.stack(stats[id(m)]).mean(dim=0)
        mu, var = first, (second - first * first).clamp_min(0)
        old = torch.sqrt(m.running_var + m.eps)
        new = torch.sqrt(var + m.eps)
        m.bias.add_(m.weight * (mu - m.running_mean) / old)
        m.weight.mul_(new / old)
        m.running_mean.copy_(mu)
        m.running_var.copy_(var)
        changed += 1
    return changed


class BatchNormUnfold(Callback):
    """``finetune.unfold_bn``: before the first training step, :func:`unfold_batchnorm` on ``batches``
    training batches (not on resume: the checkpoint holds the unfolded layers)."""

    def __init__(self, batches: int = 8) -> None:
        self.batches = int(batches)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0 or trainer.datamodule is None:
            return
        loader = trainer.datamodule.train_dataloader()
        images = (batch[0].to(pl_module.device) for _, batch in zip(range(self.batches), loader, strict=False))
        changed = unfold_batchnorm(pl_module.backbone, images)
        log.info(
            "finetune.unfold_bn: %d backbone BatchNorm layers took the statistics of %d training batches "
            "(the network's function unchanged)",
            changed,
            self.batches,
        )


class BackboneFreeze(Callback):
    """Keep the task's ``backbone`` frozen while ``finetune.frozen_at(epoch, step, planned steps)`` (added
    by the task itself, ``BaseTask.configure_callbacks``, from ``finetune.*``).

    Args:
        finetune: the task's :class:`~mbtasks.tasks.finetune.FineTune` (freeze, when to unfreeze,
            ``lr_mult`` for the log line, ``freeze_bn``: BatchNorm in eval mode while the backbone trains).
    """

    def __init__(self, finetune) -> None:
        self.finetune = finetune
        self._bn_logged = False
        self._frozen: bool | None = None

    @staticmethod
    def planned_steps(trainer: L.Trainer) -> int | None:
        """The run's planned optimizer steps: ``train.time``'s plan (``None`` until it has timed its first
        steps), else Lightning's estimate."""
        budget = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, TimeBudget)), None)
        if budget is not None and budget.budget is not None:
            return budget.total_steps
        total = getattr(trainer, "estimated_stepping_batches", None)
        return int(total) if total is not None and math.isfinite(total) else None

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ft, backbone = self.finetune, pl_module.backbone
        if not ft.freeze:
            self._bn_eval(backbone, trainer.current_epoch)
            return
        planned = self.planned_steps(trainer) if ft.unfreeze_at_share is not None else None
        frozen = ft.frozen_at(trainer.current_epoch, trainer.global_step, planned)
        if frozen != self._frozen:
            set_frozen(backbone, frozen)
            log.info(
                "epoch %d, step %d: backbone %s",
                trainer.current_epoch,
                trainer.global_step,
                "frozen (BatchNorm in eval)" if frozen else f"trainable (LR x {ft.lr_mult})",
            )
            self._frozen = frozen
        elif frozen:
            # Lightning puts the whole module back in train mode (each epoch, after validation).
            backbone.eval()
        if not frozen:
            self._bn_eval(backbone, trainer.current_epoch)

    def _bn_eval(self, backbone: nn.Module, epoch: int) -> None:
        """``freeze_bn``: BatchNorm in eval mode (Lightning sets train mode again after each validation)."""
        if not self.finetune.freeze_bn:
            return
        norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms and norms[0].training:
            if not self._bn_logged:
                log.info("epoch %d: backbone BatchNorm statistics frozen (finetune.freeze_bn)", epoch)
                self._bn_logged = True
            for m in norms:
                m.eval()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ft = self.finetune
        if ft.unfreezes and getattr(trainer, "world_size", 1) > 1:
            # DDP fixes the parameters it synchronises when it wraps the model: a backbone frozen
            # then would be trained, after unfreezing, with gradients never averaged across ranks.
            when = (
                f"finetune.unfreeze_at_epoch={ft.unfreeze_at_epoch}"
                if ft.unfreeze_at_epoch is not None
                else f"finetune.unfreeze_at_share={ft.unfreeze_at_share}"
            )
            raise ConfigError(
                f"{when} needs a single-process run: with {trainer.world_size} DDP processes the unfrozen "
                "backbone would not be synchronised; freeze for the whole run (finetune.unfreeze_at_epoch=null "
                "finetune.unfreeze_at_share=null) or train on one device"
            )
        self._frozen = None
        self._apply(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._apply(trainer, pl_module)
