"""What every task LightningModule shares: optimizers from config, self-describing checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

CHECKPOINT_KEY = "mbtasks"


class BaseTask(L.LightningModule):
    """Base of the three tasks.

    Subclasses set ``name``, ``head_class``, ``monitor`` / ``monitor_mode`` (the metric that picks
    ``best.ckpt``) and build ``self.model`` (plain nn code, usable without Lightning).

    Args:
        info: what the data module says about the data (class names, image size,
            mean/std); stored in every checkpoint.
        optimizer: ``functools.partial`` of a torch optimizer (Hydra ``_partial_``).
        scheduler: ``functools.partial(fn, ...)`` of a factory
            ``fn(optimizer, total_steps, steps_per_epoch)`` or ``None``.
    """

    name: ClassVar[str] = ""
    # The head class the task completes (``head._target_`` must be it or a subclass).
    head_class: ClassVar[type | None] = None
    monitor: ClassVar[str] = "val/loss"
    monitor_mode: ClassVar[str] = "min"
    # data.image_size must be a multiple of this (1: any side >= 32; a head that needs more says so)
    input_multiple: ClassVar[int] = 1
    # op types export.quantize=int8 keeps in float unless export.int8_exclude says otherwise (measured per task)
    int8_keep_float: ClassVar[tuple[str, ...]] = ()

    def __init__(self, info: dict, optimizer: Callable | None = None, scheduler: Callable | None = None) -> None:
        super().__init__()
        # Hydra's instantiate turns dict arguments into DictConfig; checkpoints need plain types.
        self.info = OmegaConf.to_container(info, resolve=True) if isinstance(info, DictConfig) else dict(info)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Set by build_task: the resolved run config, stored in checkpoints.
        self.run_config: dict[str, Any] = {}
        # Set by build_task from backbone.lr_mult: the backbone's LR is lr * backbone_lr_mult.
        self.backbone_lr_mult = 1.0
        # Set by build_task from optimizer.no_decay: parameter kinds trained without weight decay.
        self.no_decay: tuple[str, ...] = ()
        self.model: nn.Module
        # Lightning's model summary counts FLOPs on this input (without it the summary prints "Total FLOPs: 0")
        self.example_input_array = self.example_input()

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups: ``head`` (everything trainable but the backbone) and ``backbone``.

        The backbone group holds all backbone parameters, frozen ones too: a frozen parameter
        gets no gradient, so the optimizer skips it, and unfreezing later (``backbone.unfreeze_at_epoch``)
        needs no new group, so schedulers and resumed optimizer states stay aligned.
        Its ``lr_mult`` (``backbone.lr_mult``) scales the optimizer's LR for the backbone.
        """
        backbone = getattr(getattr(self, "model", None), "backbone", None)
        if not isinstance(backbone, nn.Module):
            return [{"params": [p for p in self.parameters() if p.requires_grad]}]
        in_backbone = {id(p) for p in backbone.parameters()}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in in_backbone]
        groups = [{"params": head, "name": "head"}] if head else []
        groups.append({"params": list(backbone.parameters()), "name": "backbone", "lr_mult": self.backbone_lr_mult})
        return groups

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("no optimizer configured (set the `optimizer` config group)")
        optimizer = self.optimizer_factory(split_no_decay(self, self.parameter_groups(), self.no_decay))
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_mult", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, int(self.trainer.max_epochs or 1))
        scheduler = self.scheduler_factory(optimizer, total_steps=total, steps_per_epoch=max(1, total // epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        """Raise :class:`~mbtasks.errors.NonFiniteLossError` naming step, epoch and every term if any is NaN/inf.

        Called by ``training_step`` before logging, so a diverged step never reaches the
        optimizer's state, the logs or a checkpoint.
        """
        from mbtasks.callbacks.finite_loss import is_finite, non_finite_loss_error

        if not all(is_finite(v) for v in terms.values()):
            raise non_finite_loss_error(self.global_step, self.current_epoch, terms)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {"task": self.name, "config": self.run_config, "info": self.info}

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        size = int(self.info.get("image_size", 224))
        return torch.zeros(batch_size, 3, size, size)

    @classmethod
    def profile_info(cls, cfg) -> dict:
        """Data info for counting the network as the papers do (``profile.num_classes`` classes)."""
        n = int(cfg.profile.num_classes)
        return {"class_names": [f"class_{i}" for i in range(n)], "image_size": int(cfg.data.image_size),
                "mean": list(cfg.data.mean), "std": list(cfg.data.std)}


NO_DECAY_KINDS = ("norm", "bias", "depthwise")


def check_no_decay(kinds) -> tuple[str, ...]:
    """``optimizer.no_decay`` as a tuple; :class:`~mbtasks.errors.ConfigError` for an unknown kind."""
    kinds = tuple(kinds or ())
    unknown = [k for k in kinds if k not in NO_DECAY_KINDS]
    if unknown:
        from mbtasks.errors import ConfigError

        raise ConfigError(f"optimizer.no_decay={list(kinds)}: unknown kinds {unknown}; expected some of "
                          f"{list(NO_DECAY_KINDS)}")
    return kinds


def no_decay_kind(module: nn.Module, name: str) -> str | None:
    """Which of :data:`NO_DECAY_KINDS` ``module``'s own parameter ``name`` is, if any."""
    if isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
        return "norm"
    if name == "bias":
        return "bias"
    if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
        return "depthwise"
    return None


def split_no_decay(model: nn.Module, groups: list[dict], kinds: tuple[str, ...] | list[str]) -> list[dict]:
    """Split every optimizer group in two: parameters of ``kinds`` get ``weight_decay=0``.

    MobileNet V1 (Sec. 3.4) trains depthwise filters with little or no weight decay, "since
    there are so few parameters in them"; normalisation weights and biases are commonly
    left undecayed too. A group that ends up empty is dropped.
    """
    kinds = check_no_decay(kinds)
    if not kinds:
        return groups
    exempt = {id(p) for m in model.modules() for n, p in m.named_parameters(recurse=False)
              if no_decay_kind(m, n) in kinds}
    out = []
    for group in groups:
        params = list(group["params"])
        rest = {k: v for k, v in group.items() if k != "params"}
        decay = [p for p in params if id(p) not in exempt]
        plain = [p for p in params if id(p) in exempt]
        if decay:
            out.append({**rest, "params": decay})
        if plain:
            out.append({**rest, "params": plain, "weight_decay": 0.0,
                        "name": f"{rest.get('name', 'params')}_no_decay"})
    return out
