"""Tasks from a config (training) and from a checkpoint alone (test, predict, export, transfer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from mbtasks import checkpoint
from mbtasks.errors import ConfigError, UserError
from mbtasks.inference.settings import check_argument
from mbtasks.tasks.base import BaseTask
from mbtasks.tasks.health import warn_loaded
from mbtasks.tasks.spec import TaskSpec


def instantiate(node, **kwargs):
    """Hydra's ``instantiate``, with our own errors (bad value, missing file) unwrapped from Hydra's."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def task_class(cfg: DictConfig) -> type[BaseTask]:
    """The LightningModule class ``task._target_`` names; :class:`ConfigError` when it is not a task."""
    target = OmegaConf.select(cfg, "task._target_")
    try:
        cls = get_class(str(target))
    except Exception as err:  # noqa: BLE001 - hydra raises ImportError / ValueError variants
        raise ConfigError(f"task._target_={target}: cannot import it ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, BaseTask) and isinstance(getattr(cls, "spec", None), TaskSpec)):
        raise ConfigError(f"task._target_={target}: not an mbtasks task (a BaseTask subclass with a `spec`)")
    return cls


def spec_for_config(cfg: DictConfig) -> TaskSpec:
    """The :class:`TaskSpec` of the task a config builds (through ``task._target_``)."""
    return task_class(cfg).spec


def spec_of(task: BaseTask | type[BaseTask]) -> TaskSpec:
    """The :class:`TaskSpec` of a task (instance or class)."""
    return task.spec


def build_task(cfg: DictConfig, info: dict, training: bool = True) -> BaseTask:
    """Instantiate ``cfg.task`` with the backbone, head and (for training) optimisation groups.

    Each group is one constructor: the backbone loads ``backbone.pretrained`` itself, the head is
    completed by the task, ``finetune`` and ``task.no_decay`` are task arguments. Nothing is set
    on the task afterwards.

    Args:
        cfg: the composed run config.
        info: the data module's ``info`` (class names, image size, mean/std).
        training: also build the optimizer, scheduler and fine-tuning settings (not for inference).
    """
    task_class(cfg)  # a clear error for a target that is not a task, before anything is built
    optional = {}
    if training:
        optional = {
            "optimizer": instantiate(cfg.optimizer) if cfg.get("optimizer") else None,
            "scheduler": instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
            "finetune": instantiate(cfg.finetune) if cfg.get("finetune") else None,
        }
    return instantiate(cfg.task, backbone=instantiate(cfg.backbone), head=instantiate(cfg.head), info=info, **optional)


def load_task(path: str | Path, key: str = "ckpt_path") -> tuple[BaseTask, DictConfig]:
    """Rebuild the task stored in a checkpoint, weights included, in eval mode.

    No optimizer, scheduler or pretrained weights are built or read: the checkpoint holds the weights.

    Returns:
        the task and the run config it was trained with (upgraded to today's keys).
    """
    ckpt = checkpoint.read(path, key)
    meta = ckpt[checkpoint.KEY]
    cfg = OmegaConf.create(meta["config"])
    if "pretrained" in cfg.backbone:
        cfg.backbone.pretrained = None
    for name, value in (meta.get("task_args") or {}).items():
        OmegaConf.update(cfg, f"task.{name}", value, force_add=True)
    task = build_task(cfg, meta["info"], training=False)
    task.load_state_dict(ckpt["state_dict"])
    warn_loaded(task, ckpt, path)
    return task.eval(), cfg


def load_predictor(path: str | Path, **options: Any):
    """A checkpoint as its task's predictor (``spec.predictor``; ``options`` as for
    :class:`~mbtasks.inference.Predictor`: device, fold_bn, channels_last, precision, batch_size)."""
    check_inference_options(options.get("device"), options.get("batch_size", 1))
    task, cfg = load_task(path)
    return task.spec.predictor(task, cfg, checkpoint=path, **options)


def available_devices() -> list[str]:
    """The devices this machine can run a predictor on (``cpu``, ``cuda`` / ``cuda:N``, ``mps``)."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_inference_options(device: Any, batch_size: Any) -> None:
    """Refuse a device this machine lacks (``"tpu"``, ``"cuda"`` without a GPU) and a ``batch_size`` < 1
    with a :class:`ConfigError` listing what is valid (torch's own errors name neither)."""
    check_argument("batch_size", batch_size)  # the range of predict.batch_size
    if device is None:
        return
    valid = available_devices()
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    ok = parsed is not None and (str(parsed) in valid or (parsed.type == "cpu" and parsed.index in (None, 0)))
    if not ok:
        raise ConfigError(
            f"device={device!r}: not a device of this machine; expected one of {valid} "
            f"(or None: CUDA when available, else cpu)"
        )


def check_checkpoint_task(cfg: DictConfig, task_given: bool) -> None:
    """Refuse a checkpoint of another task than the run's.

    ``mode=train`` builds ``cfg.task`` and loads ``ckpt_path`` (or ``resume``) into it, so the two
    must agree; test / predict / export rebuild the checkpoint's own task, so only a ``task=``
    given on the command line that disagrees is an error (it would be silently ignored).
    Also reads the file through :func:`mbtasks.checkpoint.read`, so a refused checkpoint gets its
    one-line error before Lightning loads it.
    """
    path = cfg.get("ckpt_path")
    if not path or (cfg.get("mode") != "train" and not task_given) or cfg.get("mode") in ("profile", "check"):
        return
    key = "resume" if cfg.get("resume") else "ckpt_path"
    stored = checkpoint.task_name(checkpoint.read(path, key))
    wanted = spec_for_config(cfg).name
    if stored != wanted:
        raise ConfigError(
            f"{key}={path} is a {stored} checkpoint, but task={wanted} was given: use task={stored} "
            f"(or leave task= out for mode=test/predict/export), or give a {wanted} checkpoint"
        )
