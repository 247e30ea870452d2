"""mode=profile: parameters, mult-adds (counted by torch.utils.flop_counter) and latency."""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mbtasks.modes.common import write_json_atomic
from mbtasks.tasks import build_task, task_class

log = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_mult_adds(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (FLOPs / 2 as counted for conv and matmul)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example)
    model.train(was_training)
    return int(counter.get_total_flops() // 2 // example.shape[0])


@torch.no_grad()
def measure_latency_ms(model: nn.Module, example: torch.Tensor, warmup: int = 3, repeats: int = 20) -> float:
    """Median wall time of a forward pass, in milliseconds."""
    model.eval()
    for _ in range(warmup):
        model(example)
    times = []
    for _ in range(repeats):
        if example.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(example)
        if example.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def profile_network(cfg: DictConfig) -> nn.Module:
    """The task's network as the papers count it (``profile.num_classes`` classes)."""
    info = task_class(cfg).profile_info(cfg)
    return build_task(cfg, info).model


def summary_line(model: nn.Module, image_size: int) -> str:
    params = count_params(model)
    macs = count_mult_adds(model, torch.zeros(1, 3, image_size, image_size))
    return f"{params / 1e6:.2f}M params, {macs / 1e6:.0f}M mult-adds at {image_size}x{image_size}"


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    if cfg.profile.threads:
        torch.set_num_threads(int(cfg.profile.threads))
    size = int(cfg.data.image_size)
    model = profile_network(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    params = count_params(model)
    macs = count_mult_adds(model, torch.zeros(1, 3, size, size))
    example = torch.randn(int(cfg.profile.batch_size), 3, size, size, device=device)
    latency = measure_latency_ms(model.to(device), example, int(cfg.profile.warmup), int(cfg.profile.repeats))
    result = {
        "task": task_class(cfg).name,
        "backbone": OmegaConf.select(cfg, "backbone._target_").rsplit(".", 1)[-1],
        "width": OmegaConf.select(cfg, "backbone.width"),
        "image_size": size,
        "num_classes": int(cfg.profile.num_classes),
        "params": int(params),
        "mult_adds": int(macs),
        "latency_ms": round(latency, 3),
        "batch_size": int(cfg.profile.batch_size),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    table = Table(title="mbtasks profile")
    for key in ("task", "backbone", "width", "image_size", "params", "mult_adds", "latency_ms", "batch_size", "threads"):
        table.add_column(key)
    table.add_row(*(
        f"{result[k] / 1e6:.2f}M" if k in ("params", "mult_adds") else str(result[k])
        for k in ("task", "backbone", "width", "image_size", "params", "mult_adds", "latency_ms", "batch_size", "threads")
    ))
    Console(width=160).print(table)
    write_json_atomic(run_dir / "profile.json", result)
    return result
