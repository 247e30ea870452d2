"""mode=profile: parameters, mult-adds (counted by torch.utils.flop_counter) and latency."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import nn

from mbtasks.atomic_files import write_json_atomic
from mbtasks.bn_folding import fold_batchnorm
from mbtasks.profiling import count_mult_adds, count_params, measure_latency_ms
from mbtasks.settings import Settings, build, setting
from mbtasks.tasks import build_task, spec_for_config

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ProfileSettings(Settings):
    """The ``profile:`` block: the counted network's classes, and how latency is measured."""

    section: ClassVar[str] = "profile"
    num_classes: int = setting(integer=True, low=1, example="1000")
    batch_size: int = setting(integer=True, low=1, example="1")
    warmup: int = setting(integer=True, low=0, example="3")
    repeats: int = setting(integer=True, low=1, example="20")
    # torch threads (null: torch's default)
    threads: int | None = setting(integer=True, low=1, optional=True, example="2")


def profile_network(cfg: DictConfig, settings: ProfileSettings | None = None) -> nn.Module:
    """The task's network as the papers count it (``profile.num_classes`` classes)."""
    settings = settings or build(cfg.profile, ProfileSettings)
    info = spec_for_config(cfg).profile_info(cfg, settings.num_classes)
    return build_task(cfg, info, training=False).model


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    settings = build(cfg.profile, ProfileSettings)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    size = int(cfg.data.image_size)
    model = profile_network(cfg, settings)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    params = count_params(model)
    # as deployed, each BatchNorm folded into its conv's bias (MobileFaceNet's paper counts that: 0.99M)
    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded)
    macs = count_mult_adds(model, torch.zeros(1, 3, size, size))
    example = torch.randn(settings.batch_size, 3, size, size, device=device)
    latency = measure_latency_ms(model.to(device), example, settings.warmup, settings.repeats)
    result = {
        "task": spec_for_config(cfg).name,
        "backbone": OmegaConf.select(cfg, "backbone._target_").rsplit(".", 1)[-1],
        "width": OmegaConf.select(cfg, "backbone.width"),
        "image_size": size,
        "num_classes": settings.num_classes,
        "params": int(params),
        "params_bn_folded": int(count_params(folded)),
        "mult_adds": int(macs),
        "latency_ms": round(latency, 3),
        "batch_size": settings.batch_size,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    table = Table(title="mbtasks profile")
    columns = (
        "task",
        "backbone",
        "width",
        "image_size",
        "params",
        "params_bn_folded",
        "mult_adds",
        "latency_ms",
        "batch_size",
        "threads",
    )
    for key in columns:
        table.add_column(key)
    table.add_row(
        *(
            f"{result[k] / 1e6:.2f}M" if k in ("params", "params_bn_folded", "mult_adds") else str(result[k])
            for k in columns
        )
    )
    Console(width=160).print(table)
    write_json_atomic(run_dir / "profile.json", result)
    return result
