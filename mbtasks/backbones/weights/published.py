"""Published ImageNet weights by name: which exist, where they are looked for, how they are read.

``backbone.pretrained=imagenet`` and ``mbtasks.load("mobilenet_v1_0.5:imagenet")`` both come here.
A weight is looked for, in this order, where the ecosystem already keeps it, so a machine that has
used torchvision or timm needs nothing more:

1. torchvision's file under its published name in ``$TORCH_HOME/hub/checkpoints/``
   (:func:`torch.hub.get_dir`);
2. timm's file in the Hugging Face cache (``$HF_HOME/hub``);
3. our cache of converted files, ``$MBTASKS_WEIGHTS_DIR`` (default
   ``${XDG_CACHE_HOME:-~/.cache}/mbtasks/weights``), written by ``python -m mbtasks weights convert``
   from Google's TF-slim graphs and TFLite files;
4. online only: torchvision's or timm's download (into 1 or 2).

Offline with none of these, :class:`~mbtasks.errors.ConfigError` names the file to place and the
command that converts it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mbtasks.atomic_files import save_torch_atomic
from mbtasks.backbones.weights import IMAGENET_MEAN, IMAGENET_STD, Converted, convert_by_position
from mbtasks.errors import ConfigError

log = logging.getLogger(__name__)

SUFFIX = ":imagenet"
FORMAT_KEY = "mbtasks_weights"
HUB_HOST = "huggingface.co"
TORCHVISION_HOST = "download.pytorch.org"


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """Whether a weights host resolves and accepts a connection (offline machines fail fast here)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Published:
    """One (architecture, width) with published ImageNet weights.

    Attributes:
        name: ``mobilenet_v1_0.5`` (``<name>:imagenet`` loads it as a classifier).
        arch: our backbone class.
        width: the width multiplier.
        torchvision: torchvision's file name in ``<hub dir>/checkpoints`` (its download URL is
            ``TORCHVISION_URL + file``).
        timm: the timm model whose default pretrained tag holds these weights.
        originals: Google's files that ``python -m mbtasks weights convert`` reads for this width.
        paper_top1: ImageNet top-1 (%) the paper reports for this width at 224 px (V1 Table 6, V2 Table 4).
    """

    name: str
    arch: str
    width: float
    torchvision: str | None = None
    timm: str | None = None
    originals: tuple[str, ...] = ()
    paper_top1: float | None = None


TORCHVISION_URL = "https://download.pytorch.org/models/"
TABLE: tuple[Published, ...] = (
    Published(
        "mobilenet_v1_0.25",
        "MobileNetV1",
        0.25,
        originals=("mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.25_128.tflite"),
        paper_top1=50.6,
    ),
    Published(
        "mobilenet_v1_0.5",
        "MobileNetV1",
        0.5,
        originals=("mobilenet_v1_0.5_160_quant.tflite", "mobilenet_v1_0.5_160.tflite"),
        paper_top1=63.7,
    ),
    Published(
        "mobilenet_v1_0.75",
        "MobileNetV1",
        0.75,
        originals=("mobilenet_v1_0.75_192_quant.tflite", "mobilenet_v1_0.75_192.tflite"),
        paper_top1=68.4,
    ),
    Published(
        "mobilenet_v1_1.0",
        "MobileNetV1",
        1.0,
        timm="mobilenetv1_100",
        originals=("mobilenet_v1_1.0_224_frozen.pb", "mobilenet_v1_1.0_224_quant.tflite"),
        paper_top1=70.6,
    ),
    Published("mobilenet_v1_1.25", "MobileNetV1", 1.25, timm="mobilenetv1_125"),
    Published("mobilenet_v2_0.5", "MobileNetV2", 0.5, timm="mobilenetv2_050"),
    Published(
        "mobilenet_v2_1.0",
        "MobileNetV2",
        1.0,
        torchvision="mobilenet_v2-b0353104.pth",
        timm="mobilenetv2_100",
        paper_top1=72.0,
    ),
    Published("mobilenet_v2_1.4", "MobileNetV2", 1.4, timm="mobilenetv2_140", paper_top1=74.7),
)


def cache_dir() -> Path:
    """Our cache of converted weights: ``$MBTASKS_WEIGHTS_DIR``, else
    ``${XDG_CACHE_HOME:-~/.cache}/mbtasks/weights``."""
    if os.environ.get("MBTASKS_WEIGHTS_DIR"):
        return Path(os.environ["MBTASKS_WEIGHTS_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mbtasks" / "weights"


def cached_file(entry: Published) -> Path:
    return cache_dir() / f"{entry.name}-imagenet.pth"


def entry_for(arch: str, width: float, key: str = "backbone.pretrained=imagenet") -> Published:
    """The table row of ``arch`` at ``width``; :class:`ConfigError` listing the published widths."""
    for entry in TABLE:
        if entry.arch == arch and abs(entry.width - float(width)) < 1e-9:
            return entry
    widths = ", ".join(f"{e.width:g}" for e in TABLE if e.arch == arch)
    known = widths or ", ".join(sorted({e.arch for e in TABLE}))
    raise ConfigError(
        f"{key}: no published ImageNet weights for {arch}(width={float(width):g}); "
        + (f"{arch} has them at widths {widths}" if widths else f"published architectures: {known}")
        + " (or train from scratch: backbone.pretrained=null)"
    )


def parse_name(spec: str) -> Published | None:
    """``mobilenet_v1_0.5:imagenet`` -> its row; ``None`` for anything else (a path)."""
    if not isinstance(spec, str) or not spec.endswith(SUFFIX):
        return None
    name = spec[: -len(SUFFIX)]
    for entry in TABLE:
        if entry.name == name:
            return entry
    m = re.fullmatch(r"mobilenet_(v[12])_([0-9.]+)", name)
    arch = {"v1": "MobileNetV1", "v2": "MobileNetV2"}.get(m.group(1)) if m else None
    if arch is not None:
        entry_for(arch, float(m.group(2)), key=spec)  # raises, naming the widths that exist
    names = ", ".join(f"{e.name}{SUFFIX}" for e in TABLE)
    raise ConfigError(f"{spec}: not a published model; published: {names}")


# ---------------------------------------------------------------- where files are
def torchvision_file(entry: Published) -> Path | None:
    if entry.torchvision is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / entry.torchvision


def timm_hub_id(entry: Published) -> tuple[str, str] | None:
    """(Hugging Face repo, file) of timm's default pretrained tag for ``entry``."""
    if entry.timm is None:
        return None
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(entry.timm)
    except Exception:  # noqa: BLE001 - an older timm without the model or the API
        return None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return (hub_id, "model.safetensors") if hub_id else None


def timm_cached_file(entry: Published) -> Path | None:
    repo = timm_hub_id(entry)
    if repo is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(*repo)
    return Path(found) if isinstance(found, str) else None


@dataclass(frozen=True)
class Found:
    """Where a weight was found: ``origin`` is ``torchvision`` | ``timm`` | ``converted``."""

    entry: Published
    origin: str
    path: Path


def find_local(entry: Published) -> Found | None:
    """The first local file of :func:`where` order, without touching the network."""
    tv = torchvision_file(entry)
    if tv is not None and tv.is_file():
        return Found(entry, "torchvision", tv)
    hf = timm_cached_file(entry)
    if hf is not None and hf.is_file():
        return Found(entry, "timm", hf)
    ours = cached_file(entry)
    if ours.is_file():
        return Found(entry, "converted", ours)
    return None


def how_to_get(entry: Published) -> str:
    """What to place where (or run) to have ``entry`` offline."""
    ways = []
    if entry.torchvision:
        ways.append(f"place torchvision's {entry.torchvision} in {torchvision_file(entry).parent}/")
    if entry.originals:
        ways.append(
            f"convert Google's {' or '.join(entry.originals)} (any TF-slim frozen graph or TFLite file of "
            f"this width) with "
            f"`python -m mbtasks weights convert FILE` (writes {cached_file(entry)})"
        )
    if entry.timm:
        ways.append(
            f"run timm.create_model('{entry.timm}', pretrained=True) once where there is internet "
            "(fills the Hugging Face cache)"
        )
    return "; or ".join(ways)


def locate(entry: Published, online: bool | None = None) -> Found:
    """:func:`find_local`, else a download when the hub is reachable, else :class:`ConfigError`."""
    found = find_local(entry)
    if found is not None:
        return found
    if online is None:
        online = (entry.torchvision is not None and hub_reachable(TORCHVISION_HOST)) or (
            entry.timm is not None and hub_reachable(HUB_HOST)
        )
    if online:
        if entry.torchvision is not None:
            torch.hub.load_state_dict_from_url(TORCHVISION_URL + entry.torchvision, progress=True)
            return Found(entry, "torchvision", torchvision_file(entry))
        if entry.timm is not None:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(*timm_hub_id(entry))
            return Found(entry, "timm", Path(path))
    raise ConfigError(f"no ImageNet weights for {entry.name} on this machine and no internet: {how_to_get(entry)}")


# ---------------------------------------------------------------- reading them
class ClassifierLayout(nn.Module):
    """Our classifier's tensor layout (``backbone.*``, ``head.fc.*``) around a backbone, without the
    head code: what published classifiers convert to."""

    def __init__(self, backbone: nn.Module, classes: int = 1000) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Module()
        self.head.fc = nn.Linear(backbone.num_features, classes)


def read(found: Found, backbone: nn.Module) -> Converted:
    """The weights ``found`` names, as a :class:`Converted` (our classifier's keys); ``backbone`` is one
    of ``found.entry``'s architecture and width (its tensor names are the target's)."""
    entry, path = found.entry, found.path
    if found.origin == "converted":
        return read_converted(path)
    if found.origin == "torchvision":
        state = torch.load(path, map_location="cpu", weights_only=True)
        mean, std, size = IMAGENET_MEAN, IMAGENET_STD, 224
    else:
        from safetensors.torch import load_file
        from timm.models import get_pretrained_cfg

        state = load_file(str(path))
        cfg = get_pretrained_cfg(entry.timm)
        mean, std = tuple(cfg.mean), tuple(cfg.std)
        size = int(cfg.input_size[-1])
    try:
        converted = convert_by_position(state, ClassifierLayout(backbone))
    except ValueError as err:
        raise ConfigError(f"{path}: not {found.origin}'s {entry.name} ImageNet weights ({err})") from err
    return Converted(
        converted,
        entry.arch,
        entry.width,
        size,
        act="relu6",
        padding="symmetric",
        mean=mean,
        std=std,
        source=f"{found.origin} {path.name}",
    )


def describe(found: Found) -> dict:
    """What the weights need to reproduce their training: ``act``, ``padding``, ``mean``, ``std``,
    ``image_size``, ``bn_folded`` (read from the file only for converted weights)."""
    if found.origin == "converted":
        meta = read_converted(found.path)
        return {
            "act": meta.act,
            "padding": meta.padding,
            "mean": tuple(meta.mean),
            "std": tuple(meta.std),
            "image_size": meta.image_size,
            "bn_folded": meta.bn_folded,
        }
    if found.origin == "torchvision":
        return {
            "act": "relu6",
            "padding": "symmetric",
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "image_size": 224,
            "bn_folded": False,
        }
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(found.entry.timm)
    return {
        "act": "relu6",
        "padding": "symmetric",
        "mean": tuple(cfg.mean),
        "std": tuple(cfg.std),
        "image_size": int(cfg.input_size[-1]),
        "bn_folded": False,
    }


def write_converted(converted: Converted, path: Path) -> Path:
    """Save ``converted`` as our cache file (tensors and plain values only: read with ``weights_only``)."""
    meta = {k: v for k, v in asdict(converted).items() if k != "state_dict"}
    meta["mean"], meta["std"] = list(converted.mean), list(converted.std)
    save_torch_atomic({FORMAT_KEY: 1, "state_dict": OrderedDict(converted.state_dict), "meta": meta}, path)
    return path


def read_converted(path: Path) -> Converted:
    """Our cache file as a :class:`Converted`; read once per process while the file is unchanged (a run asks
    for its metadata, then its tensors)."""
    try:
        stat = Path(path).stat()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read converted weights ({err})") from err
    obj = _load_converted(str(path), stat.st_mtime_ns, stat.st_size)
    meta = dict(obj["meta"])
    meta["mean"], meta["std"] = tuple(meta["mean"]), tuple(meta["std"])
    return Converted(OrderedDict(obj["state_dict"]), **meta)


@functools.lru_cache(maxsize=2)
def _load_converted(path: str, mtime_ns: int, size: int) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise ConfigError(
            f"{path}: cannot read converted weights ({err}); convert again with "
            "`python -m mbtasks weights convert FILE`"
        ) from err
    if not isinstance(obj, dict) or FORMAT_KEY not in obj:
        raise ConfigError(f"{path}: not a converted-weights file of mbtasks")
    return obj


def backbone_part(converted: Converted) -> dict[str, torch.Tensor]:
    """The ``backbone.*`` tensors of ``converted``, named as ``backbone.state_dict()``."""
    return {k[len("backbone.") :]: v for k, v in converted.state_dict.items() if k.startswith("backbone.")}
