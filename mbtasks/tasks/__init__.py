"""Task construction from a config, and reconstruction from a checkpoint alone."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from mbtasks.backbones.pretrained import (
    LoadReport,
    is_published,
    load_pretrained,
    published_weights,
)
from mbtasks.errors import ConfigError
from mbtasks.tasks.base import CHECKPOINT_KEY, BaseTask

log = logging.getLogger(__name__)

# backbone.* keys read by mbtasks (transfer learning), not passed to the backbone's constructor.
TRANSFER_KEYS = ("pretrained", "freeze", "unfreeze_at_epoch", "lr_mult")


def task_class(cfg: DictConfig) -> type[BaseTask]:
    return get_class(cfg.task._target_)


def build_backbone(cfg: DictConfig) -> tuple[Any, LoadReport | None]:
    """Instantiate ``cfg.backbone`` and load ``backbone.pretrained`` (PATH | timm | null) into it.

    The one place pretrained weights are loaded. A backbone class with its own ``pretrained``
    argument (:class:`~mbtasks.backbones.timm.TimmBackbone`) gets ``pretrained=True`` for ``timm``
    (timm's download); our V1 / V2 get timm's published weights converted by position.
    """
    spec = cfg.backbone.get("pretrained")
    kwargs = {k: v for k, v in cfg.backbone.items() if k not in TRANSFER_KEYS}
    takes_pretrained = "pretrained" in inspect.signature(get_class(cfg.backbone._target_)).parameters
    timm_download = takes_pretrained and is_published(spec)
    if takes_pretrained:
        kwargs["pretrained"] = timm_download
    if timm_download:
        with published_weights(str(cfg.backbone.get("name", cfg.backbone._target_))):
            return instantiate(OmegaConf.create(kwargs)), None
    backbone = instantiate(OmegaConf.create(kwargs))
    return backbone, load_pretrained(backbone, spec)


def build_optimizer_factory(cfg: DictConfig) -> Callable | None:
    """``cfg.optimizer`` as a partial optimizer class; ``optimizer.no_decay`` is read by the task, not passed on."""
    if not cfg.get("optimizer"):
        return None
    return instantiate(OmegaConf.create({k: v for k, v in cfg.optimizer.items() if k != "no_decay"}))


def build_task(cfg: DictConfig, info: dict) -> BaseTask:
    """Instantiate ``cfg.task`` with the backbone, head, optimizer and scheduler groups.

    Args:
        cfg: the composed run config.
        info: the data module's ``info`` (class names, image size, mean/std).
    """
    backbone, report = build_backbone(cfg)
    head = instantiate(cfg.head)
    optimizer = build_optimizer_factory(cfg)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    task = instantiate(cfg.task, backbone=backbone, head=head, info=info, optimizer=optimizer, scheduler=scheduler)
    task.run_config = OmegaConf.to_container(cfg, resolve=True)
    task.backbone_lr_mult = float(cfg.backbone.get("lr_mult") or 1.0)
    task.no_decay = tuple(cfg.optimizer.get("no_decay") or ()) if cfg.get("optimizer") else ()
    task.pretrained_report = report
    return task


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by mbtasks (tensors and plain containers only).

    ``weights_only=True``: a checkpoint that holds pickled objects (code) is refused, not run.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: damaged, not a checkpoint, holds pickled objects, or not an mbtasks checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not ours / damaged"
        # torch's messages run to paragraphs; the first line says what failed.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "Unsupported global" in str(err):
            reason = "it holds pickled Python objects, which are not loaded (weights_only=True)"
        raise ConfigError(f"ckpt_path={path}: cannot read checkpoint: {reason or type(err).__name__}; expected a "
                          "checkpoint written by mbtasks mode=train") from err
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt:
        raise ConfigError(f"ckpt_path={path}: not an mbtasks checkpoint (no '{CHECKPOINT_KEY}' section)")
    return ckpt


def load_task(path: str | Path) -> tuple[BaseTask, DictConfig]:
    """Rebuild the task stored in a checkpoint, weights included, in eval mode.

    Returns:
        the task and the run config it was trained with.
    """
    ckpt = read_checkpoint(path)
    meta = ckpt[CHECKPOINT_KEY]
    cfg = OmegaConf.create(meta["config"])
    # Rebuild without fetching or reading pretrained weights: the checkpoint holds the weights.
    if "pretrained" in cfg.backbone:
        cfg.backbone.pretrained = None
    task = build_task(cfg, meta["info"])
    task.load_state_dict(ckpt["state_dict"])
    task.run_config = meta["config"]
    return task.eval(), cfg
