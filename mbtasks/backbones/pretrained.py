"""Backbone weights from elsewhere: ``backbone.pretrained=PATH|timm|null``.

A backbone can start from

- any mbtasks checkpoint, of any task: its ``model.backbone.*`` tensors (a classification
  run's backbone starts a detection or embedding run);
- a plain state dict of the backbone (keys as ``backbone.state_dict()``, optionally under a
  ``backbone.`` / ``model.backbone.`` / ``module.`` prefix, or inside a ``state_dict`` entry);
- a timm (``mobilenetv1_*``, ``mobilenetv2_*``) or torchvision (``mobilenet_v2``) state dict,
  converted by position (:mod:`mbtasks.backbones.weights`);
- ``timm``: the published weights timm downloads for the same architecture and width;
- ``imagenet``: the published ImageNet weights of this architecture and width, found where
  torchvision, timm or ``python -m mbtasks weights convert`` keep them
  (:mod:`mbtasks.backbones.weights.published`);
- ``auto``: ``imagenet`` when the run's data is real and the weights are on this machine, else none
  (decided with the data config before the backbone is built, :mod:`mbtasks.pretraining`; a backbone
  built directly with ``auto`` starts from random weights).

Every load reports how many tensors were loaded, and which were missing or unexpected, and
refuses a different architecture or width with a message naming both.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mbtasks import checkpoint
from mbtasks.backbones.weights import convert_by_position, foreign_origin, published
from mbtasks.backbones.weights.published import hub_reachable
from mbtasks.errors import ConfigError

log = logging.getLogger(__name__)

KEY = "backbone.pretrained"
# Prefixes a backbone's tensors carry in the state dicts we accept, most specific first.
PREFIXES = ("model.backbone.", "module.model.backbone.", "backbone.", "module.backbone.", "module.", "model.", "")
# (our class, width) -> timm model whose published weights convert to it by position.
PUBLISHED = {
    ("MobileNetV1", 1.0): "mobilenetv1_100",
    ("MobileNetV1", 1.25): "mobilenetv1_125",
    ("MobileNetV2", 0.5): "mobilenetv2_050",
    ("MobileNetV2", 1.0): "mobilenetv2_100",
    ("MobileNetV2", 1.4): "mobilenetv2_140",
}


@dataclass
class LoadReport:
    """What a pretrained load did.

    Attributes:
        source: the ``backbone.pretrained`` value.
        kind: what the source was (``mbtasks classification checkpoint``, ``state dict``...).
        loaded: tensor names copied into the backbone.
        missing: backbone tensors the source did not have (left as initialised).
        unexpected: source tensors the backbone does not have (ignored).
    """

    source: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def few(names: list[str]) -> str:
            return f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""

        return (
            f"{KEY}={self.source} ({self.kind}): loaded {len(self.loaded)} tensors, "
            f"missing {len(self.missing)}{few(self.missing)}, unexpected {len(self.unexpected)}{few(self.unexpected)}"
        )


def describe(backbone: nn.Module) -> str:
    """``MobileNetV1(width=0.25)`` / ``TimmBackbone(mobilenetv3_large_100)``."""
    name = type(backbone).__name__
    if hasattr(backbone, "model") and hasattr(backbone.model, "default_cfg"):
        return f"{name}({backbone.model.default_cfg.get('architecture', '?')})"
    return f"{name}(width={getattr(backbone, 'width', '?')})"


def describe_config(cfg: Mapping) -> str:
    """The same description from a stored ``backbone`` config."""
    name = str(cfg.get("_target_", "?")).rsplit(".", 1)[-1]
    if "name" in cfg:
        return f"{name}({cfg['name']})"
    return f"{name}(width={cfg.get('width', '?')})"


def is_published(spec) -> bool:
    """``pretrained=timm`` (or ``true``, timm.yaml's historic meaning): timm's published weights."""
    return spec is True or (isinstance(spec, str) and spec.lower() == "timm")


def is_imagenet(spec) -> bool:
    """``pretrained=imagenet``: the published ImageNet weights of this architecture and width."""
    return isinstance(spec, str) and spec.lower() == "imagenet"


def wants_file(spec) -> bool:
    return (
        isinstance(spec, str)
        and not is_published(spec)
        and not is_imagenet(spec)
        and spec.lower() not in ("", "null", "none", "false", "auto")
    )


def is_active(spec) -> bool:
    """Whether ``spec`` loads any weights (a file, ``timm`` or ``imagenet``)."""
    return is_published(spec) or is_imagenet(spec) or wants_file(spec)


def load_pretrained(backbone: nn.Module, spec) -> LoadReport | None:
    """Load ``spec`` (a path, ``timm`` or ``None``) into ``backbone``; log and return the report.

    Raises:
        ConfigError: unreadable file, no matching tensors, or a different architecture/width.
    """
    if not is_active(spec):
        return None
    if is_published(spec):
        report = load_published(backbone)
    elif is_imagenet(spec):
        report = load_imagenet(backbone)
    else:
        state, kind, source_arch = read_backbone_state(Path(spec), backbone)
        report = load_state(backbone, state, str(spec), kind, source_arch)
    log.info("%s", report.summary())
    return report


def read_backbone_state(path: Path, backbone: nn.Module) -> tuple[dict[str, torch.Tensor], str, str | None]:
    """The backbone tensors held by ``path``, what the file was, and its backbone's description.

    Returns:
        ``(state named as backbone.state_dict(), kind, source description or None)``.
    """
    if not path.is_file():
        raise ConfigError(f"{KEY}={path}: file not found (give an mbtasks checkpoint, a state dict, 'timm' or null)")
    obj = checkpoint.load_weights_only(path, KEY, "expected an mbtasks checkpoint or a (timm / torchvision) state dict")
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{KEY}={path}: holds a {type(obj).__name__}, expected a checkpoint or a state dict")
    if checkpoint.is_ours(obj) and "state_dict" in obj:
        source_cfg = checkpoint.backbone_config(obj)
        source_arch = describe_config(source_cfg) if source_cfg else None
        if source_cfg and source_cfg.get("_target_", "").rsplit(".", 1)[-1] != type(backbone).__name__:
            raise mismatch(path, source_arch, backbone)
        state = checkpoint.backbone_state(obj)
        if not state:
            raise ConfigError(f"{KEY}={path}: the checkpoint has no '{checkpoint.BACKBONE_PREFIX}*' tensors")
        return state, f"mbtasks {checkpoint.task_name(obj)} checkpoint", source_arch
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise ConfigError(f"{KEY}={path}: no tensors found")
    foreign = foreign_origin(tensors)
    if foreign is not None:
        origin = foreign[0]
        return convert_foreign(tensors, backbone, path, origin), f"{origin} MobileNet state dict", None
    own = backbone.state_dict()
    best = max(PREFIXES, key=lambda p: sum(1 for k in tensors if k.startswith(p) and k[len(p) :] in own))
    state = {k[len(best) :]: v for k, v in tensors.items() if k.startswith(best)}
    # nothing matched under any prefix: keep every tensor, so the refusal counts what the file holds
    return (state if any(k in own for k in state) else dict(tensors)), "state dict", None


def convert_foreign(
    tensors: Mapping[str, torch.Tensor], backbone: nn.Module, source, origin: str
) -> dict[str, torch.Tensor]:
    """timm / torchvision MobileNet tensors (classifier dropped) renamed to ``backbone``'s keys by position."""
    features = OrderedDict((k, v) for k, v in tensors.items() if not k.startswith("classifier"))
    try:
        return dict(convert_by_position(features, backbone))
    except ValueError as err:
        raise ConfigError(
            f"{KEY}={source}: a {origin} MobileNet state dict ({len(features)} feature tensors) does not fit "
            f"this run's {describe(backbone)} ({len(backbone.state_dict())} tensors): {err}"
        ) from err


def mismatch(source, source_arch: str | None, backbone: nn.Module, detail: str = "") -> ConfigError:
    return ConfigError(
        f"{KEY}={source} holds a {source_arch or 'different'} backbone but this run builds {describe(backbone)}"
        f"{detail}; choose the same backbone and width (e.g. backbone=... backbone.width=...) or another source"
    )


def load_state(
    backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str, kind: str, source_arch: str | None = None
) -> LoadReport:
    """Copy ``state`` (named as ``backbone.state_dict()``) into ``backbone``, checking every shape."""
    own = backbone.state_dict()
    shared = [k for k in state if k in own]
    if not shared:
        raise ConfigError(
            f"{KEY}={source}: none of its {len(state)} tensors match {describe(backbone)} "
            f"(source keys start {list(state)[:3]}, expected e.g. {list(own)[:3]})"
        )
    wrong = [k for k in shared if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise mismatch(
            source,
            source_arch,
            backbone,
            f" ({len(wrong)} tensors differ in shape, e.g. {k}: {tuple(state[k].shape)} there, "
            f"{tuple(own[k].shape)} here)",
        )
    # NaN / inf weights would only show up later as a non-finite training loss (blamed on the LR)
    checkpoint.refuse_non_finite(
        {k: state[k] for k in shared},
        f"{KEY}={source}",
        f"the file is damaged or comes from a diverged run; give another file or {KEY}=null",
    )
    backbone.load_state_dict({k: state[k] for k in shared}, strict=False)
    return LoadReport(
        source,
        kind,
        loaded=shared,
        missing=[k for k in own if k not in state],
        unexpected=[k for k in state if k not in own],
    )


@contextlib.contextmanager
def published_weights(name: str) -> Iterator[None]:
    """Around a timm download: offline, read the local cache only (no minute of retries), and turn
    a failed download into a :class:`ConfigError` that says what to do instead."""
    import huggingface_hub.constants as hub

    offline = not hub_reachable()
    saved = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    except Exception as err:
        # Hydra's InstantiationException wraps the hub's OSError.
        if not any(isinstance(e, OSError) for e in (err, err.__cause__, err.__context__)):
            raise
        reason = "no internet access (cannot reach the weights hub)" if offline else str(err).splitlines()[0]
        raise ConfigError(
            f"{KEY}=timm: could not get timm's published weights for {name}: {reason}. Download them where "
            f"there is internet (timm.create_model('{name}', pretrained=True).state_dict() saved with "
            f"torch.save) and pass {KEY}=/path/to/file.pth, or use {KEY}=null"
        ) from err
    finally:
        hub.HF_HUB_OFFLINE = saved


def activations(backbone: nn.Module) -> set[str]:
    return {
        type(m).__name__.lower()
        for m in backbone.modules()
        if isinstance(m, nn.ReLU | nn.ReLU6 | nn.Hardswish | nn.SiLU)
    }


def load_imagenet(backbone: nn.Module) -> LoadReport:
    """The published ImageNet weights of ``backbone``'s architecture and width (found, never converted here)."""
    entry = published.entry_for(type(backbone).__name__, float(getattr(backbone, "width", 0.0)))
    found = published.locate(entry)
    converted = published.read(found, backbone)
    acts, padding = activations(backbone), getattr(backbone, "padding", "symmetric")
    if acts != {converted.act}:
        log.warning(
            "%s=imagenet: %s was trained with %s, this backbone uses %s (set backbone.act=%s)",
            KEY,
            entry.name,
            converted.act,
            sorted(acts),
            converted.act,
        )
    if padding != converted.padding:
        log.warning(
            "%s=imagenet: %s was trained with %s padding, this backbone uses %s (set backbone.padding=%s)",
            KEY,
            entry.name,
            converted.padding,
            padding,
            converted.padding,
        )
    kind = f"{entry.name} ImageNet weights, {converted.source}" + (" (BatchNorm folded)" if converted.bn_folded else "")
    return load_state(backbone, published.backbone_part(converted), "imagenet", kind)


def load_published(backbone: nn.Module) -> LoadReport:
    """timm's published ImageNet weights for our V1 / V2 at a width timm publishes."""
    arch = (type(backbone).__name__, float(getattr(backbone, "width", 0.0)))
    name = PUBLISHED.get(arch)
    if name is None:
        options = ", ".join(f"{c}(width={w})" for c, w in PUBLISHED)
        raise ConfigError(f"{KEY}=timm: timm publishes no weights for {describe(backbone)}; available: {options}")
    import timm

    with published_weights(name):
        source = timm.create_model(name, pretrained=True)
    acts = activations(backbone)
    if acts != {"relu6"}:
        log.warning(
            "%s=timm: %s was trained with ReLU6, this backbone uses %s (set backbone.act=relu6)",
            KEY,
            name,
            sorted(acts),
        )
    state = convert_foreign(source.state_dict(), backbone, "timm", "timm")
    return load_state(backbone, state, "timm", f"timm {name} published weights")
