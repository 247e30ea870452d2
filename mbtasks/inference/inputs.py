"""Inputs for inference: image files, folders, PIL images, arrays and tensors, preprocessed with the
checkpoint's own eval transforms (the one batching path of predict, export and the pipeline)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from mbtasks.data.io import ImageReadError, is_image_file, read_rgb
from mbtasks.data.transforms import apply, to_tensor
from mbtasks.errors import ConfigError, DataError


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


@dataclass
class Source:
    """One input image: its name, and a path to read or the pixels given in memory."""

    name: str
    path: Path | None = None
    pixels: np.ndarray | None = None

    def read(self) -> np.ndarray:
        return self.pixels if self.pixels is not None else read_rgb(self.path)


def _as_rgb_array(image: Any, name: str) -> np.ndarray:
    """A PIL image, ``(H, W[, C])`` array or ``(C, H, W)`` tensor as ``(H, W, 3)`` uint8 RGB.

    Float arrays and tensors are taken as [0, 1]; grey images are repeated, alpha is dropped.
    """
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            raise DataError(f"{name}: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DataError(f"{name}: expected an (H, W, 3) image array, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def as_sources(inputs: Any) -> list[Source]:
    """Paths (files or folders, searched recursively), PIL images, arrays or tensors, one or many.

    A 4-D array ``(N, H, W, 3)`` or tensor ``(N, 3, H, W)`` is N images; a list of
    :class:`Source` is taken as it is.
    """
    if isinstance(inputs, list) and inputs and all(isinstance(s, Source) for s in inputs):
        return inputs
    if isinstance(inputs, str | Path):
        return [Source(str(p), path=p) for p in collect_inputs(str(inputs))]
    if isinstance(inputs, Image.Image):
        return [Source("image_0", pixels=_as_rgb_array(inputs, "image_0"))]
    if isinstance(inputs, np.ndarray | torch.Tensor) and inputs.ndim == 4:
        return [Source(f"image_{i}", pixels=_as_rgb_array(x, f"image_{i}")) for i, x in enumerate(inputs)]
    if isinstance(inputs, np.ndarray | torch.Tensor):
        return [Source("image_0", pixels=_as_rgb_array(inputs, "image_0"))]
    if isinstance(inputs, list | tuple):
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, str | Path) or (isinstance(item, np.ndarray | torch.Tensor) and item.ndim == 4):
                out += [Source(s.name if s.path else f"image_{i}_{j}", s.path, s.pixels)
                        for j, s in enumerate(as_sources(item))]
            else:
                out.append(Source(f"image_{i}", pixels=_as_rgb_array(item, f"image_{i}")))
        return out
    raise DataError(f"cannot read {type(inputs).__name__} as images: expected paths, PIL images, "
                    "numpy (H, W, 3) arrays or (3, H, W) tensors")


def eval_pipeline(train_cfg: DictConfig):
    """The checkpoint's eval transforms (``None``: the images are used as they are)."""
    return instantiate(train_cfg.data.eval_transforms) if train_cfg.data.get("eval_transforms") else None


class Preprocess:
    """``(H, W, 3)`` uint8 -> normalised ``(3, S, S)`` float32, as the checkpoint's evaluation did: the
    run config's eval transforms, then the task's ``info`` mean / std (what every consumer reads)."""

    def __init__(self, train_cfg: DictConfig, info: dict) -> None:
        self.pipeline = eval_pipeline(train_cfg)
        self.mean, self.std = tuple(info["mean"]), tuple(info["std"])

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return to_tensor(apply(self.pipeline, image)["image"], self.mean, self.std)


def batches(sources: list[Source], preprocess: Preprocess, batch_size: int, skipped: dict[str, str] | None = None
            ) -> Iterator[tuple[list[Source], list[tuple[int, int]], torch.Tensor]]:
    """Yield ``(sources, original (h, w) sizes, normalised batch)``.

    Unreadable files go to ``skipped`` (name -> reason), or raise :class:`DataError` without it.
    """
    done, sizes, tensors = [], [], []
    for source in sources:
        try:
            image = source.read()
        except ImageReadError as err:
            if skipped is None:
                raise DataError(str(err)) from err
            skipped[source.name] = str(err)
            continue
        done.append(source)
        sizes.append(image.shape[:2])
        tensors.append(preprocess(image))
        if len(done) == batch_size:
            yield done, sizes, torch.stack(tensors)
            done, sizes, tensors = [], [], []
    if done:
        yield done, sizes, torch.stack(tensors)


def file_batches(files: list[Path], train_cfg: DictConfig, info: dict, batch_size: int, skipped: dict[str, str]
                 ) -> Iterator[torch.Tensor]:
    """Normalised batches of image files (unreadable ones go to ``skipped``): what export verifies
    and calibrates on."""
    sources = [Source(str(p), path=p) for p in files]
    for _, _, batch in batches(sources, Preprocess(train_cfg, info), batch_size, skipped):
        yield batch
