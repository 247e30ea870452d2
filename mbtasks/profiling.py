"""Counting a network: parameters, mult-adds (``torch.utils.flop_counter``) and latency."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


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


def summary_line(model: nn.Module, image_size: int) -> str:
    params = count_params(model)
    macs = count_mult_adds(model, torch.zeros(1, 3, image_size, image_size))
    return f"{params / 1e6:.2f}M params, {macs / 1e6:.0f}M mult-adds at {image_size}x{image_size}"
