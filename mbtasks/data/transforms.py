"""Albumentations pipelines declared in YAML and applied to RGB uint8 arrays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> normalised ``(3, H, W)`` float tensor.

    Done in numpy (single-threaded): torch's multi-threaded kernels on one small image cost
    ~20x more under CPU contention (loader workers, shared machines).
    """
    x = image.astype(np.float32) * np.float32(1 / 255.0)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def denormalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Inverse of :func:`to_tensor`'s normalisation, clamped to [0, 1]. Works on ``(..., 3, H, W)``."""
    m = torch.tensor(mean, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, device=x.device).view(3, 1, 1)
    return (x * s + m).clamp(0, 1)


def apply(pipeline: Callable | None, image: np.ndarray, **targets) -> dict:
    """Run an albumentations pipeline (or pass through when ``None``)."""
    if pipeline is None:
        return {"image": image, **targets}
    return pipeline(image=image, **targets)
