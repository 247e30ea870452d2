"""Config checks that run at start-up, before any data is read, and the config resolvers."""

from __future__ import annotations

import difflib

from omegaconf import DictConfig, OmegaConf

from mbtasks.errors import ConfigError

MODES = ("train", "test", "predict", "profile", "export", "check")


def register_resolvers() -> None:
    """``${crop_resize:224}`` -> 256 (the resize before a centre crop at ratio 0.875)."""
    if not OmegaConf.has_resolver("crop_resize"):
        OmegaConf.register_new_resolver("crop_resize", lambda size: int(round(int(size) / 0.875)))
    if not OmegaConf.has_resolver("run_dir_for"):
        from mbtasks.resume import run_dir_for

        # hydra.run.dir: resume=<run dir> continues in the old dir instead of making a new one.
        OmegaConf.register_new_resolver("run_dir_for", run_dir_for)


register_resolvers()


def suggest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _positive_number(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{key}={value!r}: expected a number > 0 (e.g. 1.0, 0.75, 0.5, 0.25)")


def _task_input_multiple(cfg: DictConfig, default: int) -> int:
    """The task class's ``input_multiple`` (what ``data.image_size`` must be a multiple of)."""
    target = OmegaConf.select(cfg, "task._target_")
    try:
        from hydra.utils import get_class

        return int(getattr(get_class(target), "input_multiple", default))
    except Exception:  # noqa: BLE001 - an unknown target is reported when the task is built
        return default


def validate(cfg: DictConfig) -> None:
    """Check the keys every mode relies on; raise :class:`ConfigError` naming key and valid values."""
    mode = cfg.get("mode")
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: expected one of {list(MODES)}.{suggest(mode, MODES)}")
    _positive_number(cfg, "backbone.width")
    size = OmegaConf.select(cfg, "data.image_size")
    stride = 32
    # Any side >= 32 works (stride-2 convs round up, heads pool or size themselves: 112 for faces,
    # SSD300); a task class whose head needs a multiple says so in ``input_multiple``.
    multiple = _task_input_multiple(cfg, 1)
    if not isinstance(size, int) or isinstance(size, bool) or size < stride:
        raise ConfigError(f"data.image_size={size!r}: expected an integer >= {stride} (the backbone reduces its "
                          f"input {stride}x), e.g. 224, 160, 128 or 112")
    if size % multiple:
        task = OmegaConf.select(cfg, "task._target_")
        raise ConfigError(f"data.image_size={size}: {task} needs a multiple of {multiple}, e.g. "
                          f"{max(multiple, size // multiple * multiple)} or {(size // multiple + 1) * multiple}")
    boxes = OmegaConf.select(cfg, "data.train_transforms.bbox_params") is not None
    if boxes and "Detection" not in str(OmegaConf.select(cfg, "task._target_")):
        raise ConfigError("data.train_transforms has bbox_params (box augmentation, e.g. augment=ssd), which only "
                          "task=detection can use; choose augment=none|light|default")
    if mode == "train" and OmegaConf.select(cfg, "backbone.freeze") and OmegaConf.select(cfg, "backbone.pretrained") in (None, False):
        raise ConfigError("backbone.freeze=true with backbone.pretrained=null would freeze random weights; give "
                          "backbone.pretrained=PATH (a checkpoint of any mbtasks task or a state dict) or 'timm'")
    from mbtasks.tasks.base import check_no_decay

    check_no_decay(OmegaConf.select(cfg, "optimizer.no_decay"))
    if mode in ("test", "predict", "export") and not cfg.get("ckpt_path"):
        raise ConfigError(f"mode={mode} needs ckpt_path=PATH (a checkpoint written by mode=train)")
    if mode == "predict" and not any(OmegaConf.select(cfg, f"predict.{k}") for k in ("input", "pairs", "gallery")):
        raise ConfigError("mode=predict needs predict.input=PATH (an image file or a folder of images)"
                          " (embedding checkpoints: or predict.pairs=FILE)")


def misspelled_keys(overrides: list[str], config_dir: str) -> list[str]:
    """For ``key=value`` overrides naming keys absent from the composed config, say the close matches.

    Called after Hydra rejected the command line, to add "did you mean" hints.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    plain = [o for o in overrides if "=" in o and not o.startswith(("+", "~", "hydra."))]
    groups = [o for o in plain if "." not in o.split("=", 1)[0]]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name="config", overrides=groups)
    except Exception:  # noqa: BLE001 - a bad group choice: Hydra's own message lists the options
        return []
    hints = []
    for item in plain:
        key = item.split("=", 1)[0]
        if "." not in key or OmegaConf.select(cfg, key, default="__missing__") != "__missing__":
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig):
            options = [f"{parent}.{k}" for k in node.keys()]
            hints.append(f"unknown key {key!r}.{suggest(key, options)} Valid keys under {parent!r}: {sorted(node.keys())}")
        else:
            hints.append(f"unknown key {key!r}: {parent!r} is not a config section")
    return hints
