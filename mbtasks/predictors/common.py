"""Batched inference over image files with the checkpoint's own eval preprocessing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.progress import track

from mbtasks.data.io import ImageReadError, is_image_file, read_rgb
from mbtasks.data.transforms import apply, to_tensor
from mbtasks.errors import ConfigError


def collect_inputs(spec: str) -> list[Path]:
    """An image file, or every image below a folder (recursively, sorted)."""
    path = Path(spec)
    if path.is_file():
        if not is_image_file(path):
            raise ConfigError(f"predict.input={spec}: not an image file (by extension)")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise ConfigError(f"predict.input={spec}: the folder holds no image files")
        return files
    raise ConfigError(f"predict.input={spec}: no such file or folder")


def eval_pipeline(train_cfg: DictConfig):
    return instantiate(train_cfg.data.eval_transforms) if train_cfg.data.get("eval_transforms") else None


def iter_batches(files: list[Path], train_cfg: DictConfig, batch_size: int, skipped: dict[str, str]) -> Iterator[tuple[list[Path], list[tuple[int, int]], torch.Tensor]]:
    """Yield ``(files, original (h, w) sizes, normalised batch)``; unreadable files go to ``skipped``."""
    pipeline = eval_pipeline(train_cfg)
    mean, std = tuple(train_cfg.data.mean), tuple(train_cfg.data.std)
    names, sizes, tensors = [], [], []
    for path in track(files, description="predicting", transient=True):
        try:
            image = read_rgb(path)
        except ImageReadError as err:
            skipped[str(path)] = str(err)
            continue
        names.append(path)
        sizes.append(image.shape[:2])
        tensors.append(to_tensor(apply(pipeline, image)["image"], mean, std))
        if len(names) == batch_size:
            yield names, sizes, torch.stack(tensors)
            names, sizes, tensors = [], [], []
    if names:
        yield names, sizes, torch.stack(tensors)

