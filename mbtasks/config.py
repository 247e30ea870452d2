"""Config checks that run at start-up, before any data is read, and the config resolvers."""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from mbtasks import checkpoint
from mbtasks.data.base import LoaderSettings
from mbtasks.errors import ConfigError, suggest
from mbtasks.inference.settings import CONF_DIR
from mbtasks.resume import run_dir_for
from mbtasks.settings import Settings, setting
from mbtasks.tasks import spec_for_config
from mbtasks.tasks.optim import OptimizerSettings, check_no_decay

# the package's config dir (installed: mbtasks/conf; a checkout: conf/), found in one place
CONFIG_DIR = str(CONF_DIR)


def compose(overrides=()) -> DictConfig:
    """The config ``python -m mbtasks <overrides>`` composes (without Hydra's own ``hydra`` node).

    Works inside a running Hydra app too: the app's global state is put back afterwards.
    """
    saved = copy.copy(GlobalHydra.instance().hydra) if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    finally:
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


# modes that rebuild the checkpoint's own task (mode=train builds cfg.task and loads weights into it)
CHECKPOINT_TASK_MODES = ("test", "predict", "export")


def _task_config_exists(name: str, overrides: Sequence[str]) -> bool:
    """``conf/task/<name>.yaml`` in the packaged configs or a ``hydra.searchpath`` folder of ``overrides``."""
    folders = [Path(CONFIG_DIR)]
    for item in overrides:
        if item.split("=", 1)[0].lstrip("+") == "hydra.searchpath":
            folders += [Path(p) for p in re.findall(r"file://([^,\]\s]+)", item)]
    return any((folder / "task" / f"{name}.yaml").is_file() for folder in folders)


def with_checkpoint_task(overrides: Sequence[str]) -> list[str]:
    """``overrides`` plus ``task=<the checkpoint's task>`` for a test / predict / export run that names a
    checkpoint but no task, so the task's own keys (``predict.pairs``, ``export.top_k``...) compose as
    they do with ``task=`` given. Unchanged when the checkpoint cannot be read (the mode then says why)."""
    overrides = list(overrides)

    def value(key: str) -> str | None:
        items = [o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+") == key]
        return items[-1] if items else None

    path = value("ckpt_path")
    if value("mode") not in CHECKPOINT_TASK_MODES or value("task") is not None or not path or not Path(path).is_file():
        return overrides
    try:
        name = checkpoint.task_name(checkpoint.read(path))
    except Exception:  # noqa: BLE001 - not a checkpoint of ours: the mode reports it with its own message
        return overrides
    return [*overrides, f"task={name}"] if _task_config_exists(name, overrides) else overrides


def register_resolvers() -> None:
    """``${crop_resize:224}`` -> 256 (the resize before a centre crop at ratio 0.875)."""
    if not OmegaConf.has_resolver("crop_resize"):
        OmegaConf.register_new_resolver("crop_resize", lambda size: int(round(int(size) / 0.875)))
    if not OmegaConf.has_resolver("run_dir_for"):
        # hydra.run.dir: resume=<run dir> continues in the old dir instead of making a new one.
        OmegaConf.register_new_resolver("run_dir_for", run_dir_for)


register_resolvers()


@dataclass(frozen=True, kw_only=True)
class RunSettings(Settings):
    """The root keys every mode reads: ``seed`` (numpy's range)."""

    seed: int | None = setting(integer=True, low=0, high=2**32 - 1, optional=True, example="42")


@dataclass(frozen=True, kw_only=True)
class BackboneWidth(Settings):
    """``backbone.width``, the width multiplier every backbone constructor takes (timm's: none). The bound
    keeps a typo (width=100) from building a network that exhausts memory."""

    section: ClassVar[str] = "backbone"
    width: float | None = setting(low=0, low_in=False, high=4.0, optional=True, example="1.0, 0.75, 0.5, 0.25")


# The keys validate() checks for every mode, each class declared beside what takes them (the modes'
# own blocks are checked by their mode: train.*, profile.*, predict.*, export.*).
START_UP_CHECKS = (RunSettings, BackboneWidth, LoaderSettings, OptimizerSettings)


def _is_number(value, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def check_declared(cfg: DictConfig, cls: type[Settings]) -> None:
    """Raise :class:`ConfigError` when a key ``cls`` declares is out of its range in ``cfg`` (absent or
    null: not checked)."""
    prefix = f"{cls.section}." if cls.section else ""
    cls(**{f.name: OmegaConf.select(cfg, prefix + f.name, default=None) for f in fields(cls)})


def check_normalisation(cfg: DictConfig) -> None:
    """``data.mean`` / ``data.std``: three finite numbers (one per RGB channel), std > 0."""
    for key in ("data.mean", "data.std"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        items = list(value) if isinstance(value, ListConfig | list | tuple) else None
        if (
            items is None
            or len(items) != 3
            or not all(_is_number(v, False) for v in items)
            or (key == "data.std" and min(items) <= 0)
        ):
            what = "three numbers > 0" if key == "data.std" else "three numbers"
            raise ConfigError(
                f"{key}={value!r}: expected {what}, one per RGB channel (e.g. "
                f"{'[0.229, 0.224, 0.225]' if key == 'data.std' else '[0.485, 0.456, 0.406]'})"
            )


def check_epochs(cfg: DictConfig) -> None:
    """``trainer.max_epochs`` >= 1 for training (0 would test an untrained model; -1 needs max_steps)."""
    value = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if value is None or cfg.get("mode") != "train":
        return
    max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    unlimited = value == -1 and _is_number(max_steps, True) and max_steps > 0
    if not _is_number(value, True) or (value < 1 and not unlimited):
        raise ConfigError(
            f"trainer.max_epochs={value!r}: expected an integer >= 1 for mode=train (or -1 with trainer.max_steps > 0)"
        )


def check_head_fits_task(cfg: DictConfig, spec) -> None:
    """``head._target_`` must be the task's head class (``task=detection head=linear`` cannot work)."""
    wanted = spec.head
    try:
        head = get_class(OmegaConf.select(cfg, "head._target_"))
    except Exception:  # noqa: BLE001 - an unknown target is reported when the head is built
        return
    if isinstance(head, type) and issubclass(head, wanted):
        return
    fits = []
    for option in sorted(Path(CONFIG_DIR, "head").glob("*.yaml")):
        target = OmegaConf.load(option).get("_target_")
        with contextlib.suppress(Exception):
            if issubclass(get_class(target), wanted):
                fits.append(f"head={option.stem}")
    raise ConfigError(
        f"task={spec.name} cannot use head._target_={OmegaConf.select(cfg, 'head._target_')}: "
        f"it needs a {wanted.__name__}; use {' or '.join(fits) or wanted.__name__}"
    )


def validate(cfg: DictConfig) -> None:
    """Check the keys every mode relies on; raise :class:`ConfigError` naming key and valid values.

    ``mode`` names a runner (:func:`mbtasks.modes.run.runner` checks it); each mode checks its own block
    (``train.*``, ``profile.*``...) as it starts.
    """
    missing = sorted(OmegaConf.missing_keys(cfg))
    if cfg.get("mode") in ("profile", "predict", "export"):  # these read no data set (predict/export: the checkpoint's)
        missing = [k for k in missing if not k.startswith("data.")]
    if missing:
        raise ConfigError(
            f"{missing[0]} is not set (??? in the config): give {missing[0]}=VALUE on the command line"
            + (f" (also unset: {missing[1:]})" if len(missing) > 1 else "")
        )
    mode = cfg.get("mode")
    for checks in START_UP_CHECKS:
        check_declared(cfg, checks)
    check_normalisation(cfg)
    check_epochs(cfg)
    spec = spec_for_config(cfg)
    check_head_fits_task(cfg, spec)
    size = OmegaConf.select(cfg, "data.image_size")
    stride = 32
    # Any side >= 32 works (stride-2 convs round up, heads pool or size themselves: 112 for faces,
    # SSD300); a task whose head needs a multiple says so in its spec's ``input_multiple``.
    multiple = spec.input_multiple
    if not isinstance(size, int) or isinstance(size, bool):
        raise ConfigError(f"data.image_size={size!r}: expected an integer (pixels), e.g. 224")
    if size < stride:
        raise ConfigError(
            f"data.image_size={size!r}: expected an integer >= {stride} (the backbone reduces its "
            f"input {stride}x), e.g. 224, 160, 128 or 112"
        )
    if size % multiple:
        raise ConfigError(
            f"data.image_size={size}: task={spec.name} needs a multiple of {multiple}, e.g. "
            f"{max(multiple, size // multiple * multiple)} or {(size // multiple + 1) * multiple}"
        )
    boxes = OmegaConf.select(cfg, "data.train_transforms.bbox_params") is not None
    if boxes and not spec.boxes:
        raise ConfigError(
            f"data.train_transforms has bbox_params (box augmentation, e.g. augment=ssd), which "
            f"task={spec.name} cannot use; choose augment=none|light|default"
        )
    if (
        mode == "train"
        and OmegaConf.select(cfg, "finetune.freeze")
        and OmegaConf.select(cfg, "backbone.pretrained") in (None, False, "auto")
    ):
        raise ConfigError(
            "finetune.freeze=true with backbone.pretrained=null would freeze random weights; give "
            "backbone.pretrained=imagenet, PATH (a checkpoint of any mbtasks task or a state dict) or 'timm'"
        )
    check_no_decay(OmegaConf.select(cfg, "task.no_decay"))
    if mode in ("test", "predict", "export") and not cfg.get("ckpt_path"):
        raise ConfigError(f"mode={mode} needs ckpt_path=PATH (a checkpoint written by mode=train)")


def _compose_groups(overrides: list[str], config_dir: str) -> DictConfig | None:
    """The config composed with the group choices (``task=detection``) of ``overrides`` only; None if they fail."""
    groups = [
        o for o in overrides if "=" in o and not o.startswith(("+", "~", "hydra.")) and "." not in o.split("=", 1)[0]
    ]
    saved = copy.copy(GlobalHydra.instance().hydra) if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            return hydra_compose(config_name="config", overrides=groups)
    except Exception:  # noqa: BLE001 - a bad group choice: reported on its own
        return None
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def _key_hint(cfg: DictConfig, key: str, config_dir: str) -> str | None:
    """What is wrong with ``key`` in ``cfg`` (close matches, the keys of its section); None when it exists."""
    if OmegaConf.select(cfg, key, default="__missing__") != "__missing__":
        return None
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    # keys() lists keys whose value is MISSING (``root: ???``) too: those exist, they are just unset.
    if isinstance(node, DictConfig) and leaf in node.keys():
        return None
    if not parent:
        groups = sorted(p.name for p in Path(config_dir).iterdir() if p.is_dir())
        options = sorted({*cfg.keys(), *groups})
        return f"unknown key or group {key!r}.{suggest(key, options)} Top-level keys and groups: {options}"
    if isinstance(node, DictConfig):
        options = [f"{parent}.{k}" for k in node.keys()]
        return f"unknown key {key!r}.{suggest(key, options)} Valid keys under {parent!r}: {sorted(node.keys())}"
    return f"unknown key {key!r}: {parent!r} is not a config section"


def misspelled_keys(overrides: list[str], config_dir: str) -> list[str]:
    """For ``key=value`` overrides naming keys absent from the composed config, say the close matches."""
    cfg = _compose_groups(overrides, config_dir)
    if cfg is None:
        return []
    keys = [o.split("=", 1)[0] for o in overrides if "=" in o and not o.startswith(("+", "~", "hydra."))]
    return [hint for key in keys if "." in key and (hint := _key_hint(cfg, key, config_dir))]


def unknown_key(item: str, overrides: list[str], config_dir: str = CONFIG_DIR) -> str:
    """The one-line error for the override ``item`` (``trainer.max_epoch=3``) naming a key the config lacks.

    Args:
        item: the override Hydra could not apply.
        overrides: the whole command line (its group choices decide which keys exist).
        config_dir: the primary config dir.
    """
    key = item.split("=", 1)[0].lstrip("+~")
    cfg = _compose_groups([o for o in overrides if o != item], config_dir) or _compose_groups([], config_dir)
    hint = _key_hint(cfg, key, config_dir) if cfg is not None else None
    return f"{item}: {hint or f'unknown key {key!r}'} (a new key is added with +{item.lstrip('+~')})"
