"""What every task LightningModule shares: optimizer groups, fine-tuning, the loss guard, checkpoint meta."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mbtasks import checkpoint as ckpt_format
from mbtasks.callbacks.backbone_freeze import BackboneFreeze, BatchNormUnfold
from mbtasks.errors import NonFiniteLossError
from mbtasks.tasks import health
from mbtasks.tasks.finetune import FineTune
from mbtasks.tasks.optim import check_no_decay, split_no_decay
from mbtasks.tasks.spec import TaskSpec


@dataclass(frozen=True)
class TaskFigure:
    """One figure a task asks for (:meth:`BaseTask.figures`).

    Attributes:
        draw: a pure drawing function (``tasks/<name>/figures.py``): ``draw(**data)`` returns a matplotlib
            ``Figure``, or uint8 images ``(N, 3, H, W)`` for TensorBoard only.
        data: its keyword arguments: arrays, names, numbers (no task, no trainer).
        tag: TensorBoard image tag (``val/confusion_matrix``), or None.
        file: PNG file name in the run dir (``confusion_matrix.png``), or None.
    """

    draw: Callable[..., Any]
    data: Mapping[str, Any] = field(default_factory=dict)
    tag: str | None = None
    file: str | None = None


def _value(v: Any) -> float:
    return float(v.detach().float().item() if isinstance(v, torch.Tensor) else v)


class BaseTask(L.LightningModule):
    """Base of every task.

    Subclasses set ``spec`` (the task's :class:`~mbtasks.tasks.spec.TaskSpec`: name, head class,
    predictor, export, data check...), ``monitor`` / ``monitor_mode`` (the metric that picks
    ``best.ckpt``), and build ``self.model`` (plain nn code with a ``backbone``, usable without Lightning).

    Args:
        info: what the data module says about the data (class names, image size, mean/std);
            stored in every checkpoint.
        optimizer: ``functools.partial`` of a torch optimizer (Hydra ``_partial_``); ``None`` for inference.
        scheduler: ``functools.partial(fn, ...)`` of a factory ``fn(optimizer, total_steps, steps_per_epoch)``.
        finetune: how the backbone trains (:class:`~mbtasks.tasks.finetune.FineTune`; ``None``: like the rest).
        no_decay: parameter kinds trained without weight decay (``norm``, ``bias``, ``depthwise``).
    """

    spec: ClassVar[TaskSpec]
    monitor: ClassVar[str] = "val/loss"
    monitor_mode: ClassVar[str] = "min"

    def __init__(
        self,
        info: Mapping,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        finetune: FineTune | None = None,
        no_decay: Sequence[str] = (),
    ) -> None:
        super().__init__()
        # Hydra's instantiate turns dict arguments into DictConfig; checkpoints need plain types.
        self.info = OmegaConf.to_container(info, resolve=True) if isinstance(info, DictConfig) else dict(info)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Hydra hands a dataclass given as a keyword argument over as a structured config: make it the object
        if isinstance(finetune, DictConfig):
            finetune = OmegaConf.to_object(finetune)
        self.finetune = finetune or FineTune()
        self.no_decay = check_no_decay(no_decay)
        self.model: nn.Module
        # the last validation's health warnings (mbtasks.tasks.health), or a loaded checkpoint's
        self.health: list[health.HealthWarning] = []
        size = int(self.info.get("image_size", 224))
        # Lightning's model summary counts FLOPs on this input (without it the summary prints "Total FLOPs: 0")
        self.example_input_array = torch.zeros(1, 3, size, size)

    def forward(self, images: torch.Tensor):
        """The network's raw output (what ``self.model`` returns)."""
        return self.model(images)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    @property
    def tensorboard(self):
        """The TensorBoard ``SummaryWriter`` of this run, or ``None`` (no logger, another logger)."""
        from torch.utils.tensorboard import SummaryWriter

        for logger in self.loggers:
            if isinstance(getattr(logger, "experiment", None), SummaryWriter):
                return logger.experiment
        return None

    # ---------------------------------------------------------------- optimisation
    def parameter_groups(self) -> list[dict]:
        """Optimizer groups: ``head`` (everything trainable but the backbone) and ``backbone``.

        The backbone group holds all backbone parameters, frozen ones too: a frozen parameter
        gets no gradient, so the optimizer skips it, and unfreezing later (``finetune.unfreeze_at_epoch``)
        needs no new group, so schedulers and resumed optimizer states stay aligned.
        Its ``lr_mult`` (``finetune.lr_mult``) scales the optimizer's LR for the backbone.
        """
        in_backbone = {id(p) for p in self.backbone.parameters()}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in in_backbone]
        groups = [{"params": head, "name": "head"}] if head else []
        groups.append(
            {"params": list(self.backbone.parameters()), "name": "backbone", "lr_mult": self.finetune.lr_mult}
        )
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

    def configure_callbacks(self) -> list[L.Callback]:
        """A frozen backbone (``finetune.freeze``) is unfrozen at ``finetune.unfreeze_at_epoch`` / ``_share``;
        ``finetune.freeze_bn`` keeps its BatchNorm statistics."""
        ft = self.finetune
        callbacks: list[L.Callback] = [BatchNormUnfold()] if ft.unfold_bn else []
        if ft.freeze or ft.freeze_bn:
            callbacks.append(BackboneFreeze(ft))
        return callbacks

    # ---------------------------------------------------------------- training
    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        """The training loss of ``batch`` as named terms; ``"loss"`` is the one optimised."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        self.check_finite(terms)
        n = len(batch[0])
        for key, value in terms.items():
            if key != "loss":
                self.log(f"train/{key}", value, batch_size=n)
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=n)
        return terms["loss"]

    def check_finite(self, terms: Mapping[str, Any]) -> None:
        """Raise :class:`~mbtasks.errors.NonFiniteLossError` naming step, epoch and every term if any is NaN/inf.

        Runs before logging and backward, so a diverged step never reaches the optimizer's state,
        the logs or a checkpoint (``last.ckpt`` stays the last good one).
        """
        values = {k: _value(v) for k, v in terms.items()}
        if all(math.isfinite(v) for v in values.values()):
            return
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLossError(
            f"training loss is not finite at global step {self.global_step} (epoch {self.current_epoch}): {shown}. "
            "Lower optimizer.lr, set trainer.gradient_clip_val, or check the data of this step"
        )

    # ---------------------------------------------------------------- figures (callbacks.plots)
    def figures(self, stage: str, sample: tuple | None = None) -> list[TaskFigure]:
        """What to draw after ``stage``'s epoch (``val`` or ``test``), from the data this task gathered.

        The run-plots callback calls it on rank 0 after each validation (it logs the tags then, and writes the
        files of the last validation after fitting) and after testing, in eval mode without gradients.

        Args:
            stage: ``val`` or ``test``.
            sample: the first images of the stage's first batch (``callbacks.plots.images`` of them, the
                batch's parts cut alike), for figures of predictions; ``None`` when the run writes no files.
        """
        return []

    # ---------------------------------------------------------------- checkpoints
    def task_args(self) -> dict[str, Any]:
        """Constructor arguments learnt when training started (stored in checkpoints, given back on load)."""
        return {}

    def set_health(self, warnings: list[health.HealthWarning]) -> None:
        """Keep this validation's health warnings (each task's ``health.check``); checkpoints store them."""
        self.health = list(warnings)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        ckpt_format.stamp(checkpoint, task=self.name, info=self.info, task_args=self.task_args())
        health.to_checkpoint(checkpoint, self.health)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # trainer.test(ckpt_path=best) restores best.ckpt's warnings, not the last epoch's
        self.health = health.from_checkpoint(checkpoint)
