"""What starting from pretrained weights changes in a run, decided once at start-up.

- ``backbone.pretrained=auto`` (the default) becomes ``imagenet`` when the data is real (a data
  config without a ``generator``) and the published weights of the chosen backbone and width are on
  this machine; otherwise ``null``, with one line saying how to get them.
- ``backbone.pretrained=imagenet`` sets what the weights need to reproduce their training
  (``backbone.act``, ``backbone.padding``, ``data.mean`` / ``data.std``) unless given.
- Any pretrained start (``imagenet``, ``timm``, a file, another task's checkpoint) applies the task's
  ``finetune_recipe`` (``conf/task/<task>.yaml``): the keys that replace the from-scratch recipe,
  each unless given on the command line. ``finetune_recipe=null`` trains as from scratch.
- ``ckpt_path=mobilenet_v1_0.5:imagenet`` (and ``mbtasks.load`` of that name) is the published
  classifier as an mbtasks checkpoint, written once into the weights cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from mbtasks import checkpoint
from mbtasks.atomic_files import save_torch_atomic
from mbtasks.backbones.pretrained import is_active, is_imagenet
from mbtasks.backbones.weights import published
from mbtasks.config import compose
from mbtasks.errors import ConfigError
from mbtasks.tasks import build_task

log = logging.getLogger("mbtasks")

KEY = "backbone.pretrained"
# our backbone class -> its config group
GROUPS = {"MobileNetV1": "mobilenet_v1", "MobileNetV2": "mobilenet_v2"}
CLASSES_FILE = Path(published.__file__).with_name("imagenet_classes.tsv")


def given_keys(overrides: Iterable[str]) -> set[str]:
    """Keys set on the command line (``optimizer=sgd`` gives ``optimizer``; ``+a.b=1`` gives ``a.b``)."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


def is_given(key: str, given: set[str], groups: bool = True) -> bool:
    """``key`` was set on the command line; with ``groups``, also when a group above it was chosen
    (``optimizer=sgd`` for ``optimizer.lr``: a recipe's LR belongs to its optimizer)."""
    if not groups:
        return key in given
    parts = key.split(".")
    return any(".".join(parts[:i]) in given for i in range(1, len(parts) + 1))


def backbone_arch(cfg: DictConfig) -> tuple[str, float]:
    target = str(OmegaConf.select(cfg, "backbone._target_", default=""))
    return target.rsplit(".", 1)[-1], float(OmegaConf.select(cfg, "backbone.width", default=1.0) or 1.0)


def real_data(cfg: DictConfig) -> bool:
    """A data config that reads the user's files (no synthetic ``generator``)."""
    data = cfg.get("data")
    return isinstance(data, DictConfig) and "generator" in data and data.get("generator") is None


def resolve_auto(cfg: DictConfig) -> str | None:
    """``auto`` -> ``imagenet`` or ``None``, logging the decision in one line."""
    if not real_data(cfg):
        return None
    arch, width = backbone_arch(cfg)
    if arch == "TimmBackbone":
        return None
    entry = next((e for e in published.TABLE if e.arch == arch and abs(e.width - width) < 1e-9), None)
    if entry is None:
        widths = ", ".join(f"{e.width:g}" for e in published.TABLE if e.arch == arch)
        log.info(
            "%s=auto: no published ImageNet weights for %s(width=%g) (published widths: %s): training from scratch",
            KEY,
            arch,
            width,
            widths or "none",
        )
        return None
    found = published.find_local(entry)
    if found is None:
        log.warning(
            "%s=auto: training from scratch; ImageNet weights for %s would fine-tune far better on real photos: %s",
            KEY,
            entry.name,
            published.how_to_get(entry),
        )
        return None
    log.info(
        "%s=auto: real data and %s ImageNet weights on this machine (%s): fine-tuning from them "
        "(%s=null trains from scratch)",
        KEY,
        entry.name,
        found.path,
        KEY,
    )
    return "imagenet"


def weights_needs(cfg: DictConfig) -> dict[str, object]:
    """The config keys the published weights need (act, padding, mean, std; BatchNorm statistics from the
    data for BatchNorm-folded weights)."""
    arch, width = backbone_arch(cfg)
    if arch == "TimmBackbone":
        return {}
    entry = published.entry_for(arch, width)
    found = published.locate(entry)
    meta = published.describe(found)
    needs: dict[str, object] = {
        "backbone.act": meta["act"],
        "data.mean": list(meta["mean"]),
        "data.std": list(meta["std"]),
    }
    if meta["padding"] != "symmetric" or "padding" in cfg.backbone:
        needs["backbone.padding"] = meta["padding"]
    if meta["bn_folded"]:
        # Folded weights leave every BatchNorm the identity with running mean 0 / var 1: batch statistics
        # would renormalise the convolutions' outputs and undo the weights, so BatchNorm first takes the
        # data's statistics with the function kept (frozen statistics instead broke AdamW fine-tunes).
        needs["finetune.unfold_bn"] = True
    return needs


def several_processes(cfg: DictConfig) -> bool:
    """DDP (or several devices / nodes): a backbone frozen at the start cannot be unfrozen later there."""
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="") or "")
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1) or 1
    many = (isinstance(devices, int) and devices > 1) or (isinstance(devices, list | tuple) and len(devices) > 1)
    return strategy.startswith("ddp") or many or int(nodes) > 1


def flat(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, DictConfig):
        out: dict[str, object] = {}
        for k in node.keys():
            out.update(flat(node[k], f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def augment_pipeline(name: str) -> DictConfig:
    """``conf/augment/<name>.yaml``'s training pipeline, interpolations (``${data.image_size}``) kept."""
    try:
        pipeline = compose([f"augment={name}"]).data.train_transforms
    except Exception as err:  # Hydra's MissingConfigException lists the group's options
        raise ConfigError(f"finetune_recipe.augment={name}: no such augment preset ({err})") from err
    return OmegaConf.create(OmegaConf.to_container(pipeline, resolve=False))


def prepare(cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """Apply the rules of this module to a ``mode=train`` config (in place; returns it)."""
    if cfg.get("mode") != "train" or "backbone" not in cfg:
        return cfg
    given = given_keys(overrides)
    spec = OmegaConf.select(cfg, KEY, default=None)
    if isinstance(spec, str) and spec.lower() == "auto":
        spec = resolve_auto(cfg)
        with open_dict(cfg):
            cfg.backbone.pretrained = spec
    if not is_active(spec):
        return cfg
    changed: dict[str, object] = {}
    augment = None
    if is_imagenet(spec):
        for key, value in weights_needs(cfg).items():
            # data=voc or backbone=mobilenet_v1 choose a group, not these keys
            if is_given(key, given, groups=False):
                if OmegaConf.select(cfg, key) != value:
                    log.warning(
                        "%s=imagenet: %s=%s was given, but the weights were trained with %s",
                        KEY,
                        key,
                        OmegaConf.select(cfg, key),
                        value,
                    )
                continue
            changed[key] = value
    recipe = cfg.get("finetune_recipe")
    if isinstance(recipe, DictConfig):
        items = flat(recipe)
        warmup = ("finetune.freeze", "finetune.unfreeze_at_epoch", "finetune.unfreeze_at_share")
        if several_processes(cfg) and any(items.get(k) is not None for k in warmup[1:]):
            # DDP fixes the synchronised parameters when it wraps the model: no frozen warm-up there
            log.info("%s: several processes, so the recipe's frozen-backbone warm-up is left out", KEY)
            items = {k: v for k, v in items.items() if k not in warmup}
        augment = items.pop("augment", None)
        # augment=..., an experiment (it may choose one) or a data.train_transforms key on the command line win
        chosen = given & {"augment", "experiment"} or any(k.startswith("data.train_transforms") for k in given)
        if augment is not None and not chosen:
            changed["data.train_transforms"] = augment_pipeline(str(augment))
        for key, value in items.items():
            if not is_given(key, given):
                changed[key] = value
    for key, value in changed.items():
        OmegaConf.update(cfg, key, value, force_add=True)  # merged as Hydra merges augment=...
    if changed:
        shown = " ".join(
            f"augment={augment}" if k == "data.train_transforms" else f"{k}={v}" for k, v in changed.items()
        )
        log.info(
            "%s=%s: fine-tuning recipe of task=%s: %s (keys given on the command line win; "
            "finetune_recipe=null trains as from scratch)",
            KEY,
            spec,
            cfg.get("task", {}).get("_target_", "?").rsplit(".", 1)[-1].removesuffix("Task").lower(),
            shown,
        )
    return cfg


# ---------------------------------------------------------------- published classifiers by name
def class_names() -> list[str]:
    """The 1000 ImageNet class names in the standard (sorted-wnid) order of every published classifier."""
    rows = [line.split("\t") for line in CLASSES_FILE.read_text().splitlines() if line.strip()]
    return [row[2] for row in rows]


def named_checkpoint(spec: str, key: str = "ckpt_path") -> Path:
    """``mobilenet_v1_0.5:imagenet`` -> the published classifier as an mbtasks checkpoint (written once
    into the weights cache, beside the converted file); other values are returned as paths."""
    entry = published.parse_name(spec)
    if entry is None:
        return Path(spec)
    found = published.locate(entry)
    path = published.cache_dir() / f"{entry.name}-imagenet.ckpt"
    if path.is_file() and path.stat().st_mtime >= found.path.stat().st_mtime:
        return path
    meta = published.describe(found)
    group = GROUPS[entry.arch]
    cfg = compose(
        [
            "task=classification",
            f"backbone={group}",
            f"backbone.width={entry.width}",
            f"backbone.act={meta['act']}",
            f"backbone.padding={meta['padding']}",
            "backbone.pretrained=null",
            "data=imagefolder",
            f"data.image_size={meta['image_size']}",
            f"data.mean=[{','.join(map(str, meta['mean']))}]",
            f"data.std=[{','.join(map(str, meta['std']))}]",
        ]
    )
    OmegaConf.update(cfg, "data.class_names", class_names(), force_add=True)
    info = {
        "class_names": class_names(),
        "image_size": int(meta["image_size"]),
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
    }
    task = build_task(cfg, info, training=False)
    converted = published.read(found, task.model.backbone)
    missing, unexpected = task.model.load_state_dict(converted.state_dict, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{key}={spec}: {found.path} does not fit {entry.name} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    ckpt = {"state_dict": task.state_dict()}
    checkpoint.stamp(
        ckpt,
        task=task.name,
        info=task.info,
        task_args=task.task_args(),
        config=OmegaConf.to_container(cfg, resolve=True),
        published=f"{entry.name}{published.SUFFIX}",
        source=str(found.path),
    )
    save_torch_atomic(ckpt, path)
    log.info("%s=%s: %s written from %s", key, spec, path, found.path)
    return path
