"""Task construction from a config, and reconstruction from a checkpoint alone."""

from __future__ import annotations

import inspect
import logging
import pickle
import pickletools
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


# Pickle opcodes that import a global or call one: what weights_only refuses to run.
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def pickled_objects(path: Path) -> list[str]:
    """Names of the globals (classes, functions) a checkpoint's pickle would import, ``[]`` when none.

    torch's own scan reads its zip format; a legacy or raw pickle is scanned with ``pickletools``.
    Raises ``ValueError`` when the file is not a pickle at all.
    """
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except ValueError:  # not torch's zip format
        pass
    names, strings = [], []
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            while f.tell() < size:  # torch's legacy format is several pickles, then raw storages
                for op, arg, _ in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        names.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL":
                        names.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
                    elif op.name in _CODE_OPCODES and not names:
                        names.append(f"a {op.name} instruction")
                    elif isinstance(arg, str):
                        strings.append(arg)
        except Exception as err:  # noqa: BLE001 - pickletools raises ValueError, EOFError... on non-pickles
            if not names:
                raise ValueError(f"not a pickle ({err})") from err
    try:  # leave out what torch allows (OrderedDict, tensor rebuilds); private, hence the guard
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError):
        allowed = set()
    return sorted(set(names) - allowed) or sorted(set(names))


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """Load a checkpoint written by mbtasks (tensors and plain containers only).

    ``weights_only=True``: a checkpoint that holds pickled objects (code) is refused, not run.
    The refusal is recognised by its type (``pickle.UnpicklingError`` from torch's weights-only
    unpickler) and the file is scanned to name the objects, whatever torch's wording.

    Args:
        path: the checkpoint.
        key: the config key that named it (``ckpt_path``, ``resume``), for messages.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: damaged, not a checkpoint, holds pickled objects, or not an mbtasks checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path}: file not found")
    expected = "expected a checkpoint written by mbtasks mode=train"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False: the wrong advice for a file that would run code.
        try:
            objects = pickled_objects(path)
        except (ValueError, OSError):
            objects = []
        if objects:
            shown = ", ".join(objects[:5]) + (", ..." if len(objects) > 5 else "")
            reason = (f"it holds pickled Python objects ({shown}), which are not loaded: loading them would run "
                      "code (weights_only=True)")
        else:
            reason = "not a torch checkpoint (torch's weights-only reader cannot parse it)"
        raise ConfigError(f"{key}={path}: cannot read checkpoint: {reason}; {expected}") from err
    except Exception as err:  # noqa: BLE001 - any other failure means "damaged / not ours"
        # torch's messages run to paragraphs; the first line says what failed.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{key}={path}: cannot read checkpoint: {reason or type(err).__name__}; {expected}") from err
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt:
        raise ConfigError(f"{key}={path}: not an mbtasks checkpoint (no '{CHECKPOINT_KEY}' section)")
    return ckpt


def checkpoint_task_name(ckpt: dict[str, Any]) -> str:
    """The task (``classification`` / ``detection`` / ``embedding``) a checkpoint was trained for."""
    config = ckpt[CHECKPOINT_KEY].get("config") or {}
    target = (config.get("task") or {}).get("_target_")
    try:
        return get_class(target).name
    except Exception:  # noqa: BLE001 - a target this version does not have
        return str(target)


def check_checkpoint_task(cfg: DictConfig, task_given: bool) -> None:
    """Refuse a checkpoint of another task than the run's.

    ``mode=train`` builds ``cfg.task`` and loads ``ckpt_path`` (or ``resume``) into it, so the two
    must agree; test / predict / export rebuild the checkpoint's own task, so only a ``task=``
    given on the command line that disagrees is an error (it would be silently ignored).
    Also reads the file through :func:`read_checkpoint`, so a refused checkpoint gets its
    one-line error before Lightning loads it.
    """
    path = cfg.get("ckpt_path")
    if not path or (cfg.get("mode") != "train" and not task_given) or cfg.get("mode") in ("profile", "check"):
        return
    key = "resume" if cfg.get("resume") else "ckpt_path"
    stored = checkpoint_task_name(read_checkpoint(path, key))
    wanted = task_class(cfg).name
    if stored != wanted:
        raise ConfigError(f"{key}={path} is a {stored} checkpoint, but task={wanted} was given: use task={stored} "
                          f"(or leave task= out for mode=test/predict/export), or give a {wanted} checkpoint")


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
