"""Inputs for inference: image files, folders, PIL images, arrays and tensors, preprocessed with the
checkpoint's own eval transforms (the one batching path of predict, export and the pipeline)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image, ImageOps

from mbtasks.data.image_files import ImageReadError, is_image_file, read_rgb, to_rgb_array
from mbtasks.data.transforms import apply, to_tensor
from mbtasks.errors import ConfigError, DataError
from mbtasks.export.preprocessing import preprocessing_of
from mbtasks.export.torch_pipeline import Preprocess as GraphPreprocess

log = logging.getLogger(__name__)


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


def _numeric_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """A non-uint8 ``(H, W, C)`` array as uint8, by the file reader's rules
    (:func:`mbtasks.data.image_files._value_range_to_uint8`): ``bool`` is 0 / 255, ``uint16`` is 16-bit
    (0..65535); other integer and float arrays carry no range, so it is read from the values: floats all
    within [0, 1] are 0..1, values within [0, 255] are 8-bit levels, within [0, 65535] 16-bit; negative,
    larger or non-finite values, and other dtypes, are refused by name."""
    kind = array.dtype.kind
    if kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if kind not in "uif":
        raise DataError(
            f"{name}: a {array.dtype} array is not an image: expected uint8 (0..255), uint16 "
            "(0..65535), bool, or other integers / floats in [0, 1], [0, 255] or [0, 65535]"
        )
    values = array.astype(np.float64)
    if array.dtype == np.uint16:
        top = 65535.0
    else:
        if not np.isfinite(values).all():
            raise DataError(f"{name}: a {array.dtype} image holds NaN or infinite values")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > 65535:
            raise DataError(
                f"{name}: a {array.dtype} image with values {lo:g}..{hi:g}: expected values in [0, 1] "
                "(floats), [0, 255] or [0, 65535], or a uint8 array"
            )
        top = 1.0 if kind == "f" and hi <= 1 else 255.0 if hi <= 255 else 65535.0
    read = {1.0: "0..1", 255.0: "8-bit levels 0..255", 65535.0: "16-bit levels 0..65535"}[top]
    if (str(array.dtype), read) not in _SAID:  # the rule is documented; say once which way it read
        _SAID.add((str(array.dtype), read))
        log.info("%s: %s pixels read as %s (the file reader's rule; give uint8 to skip it)", name, array.dtype, read)
    return np.rint(values * (255.0 / top)).astype(np.uint8)


_SAID: set[tuple[str, str]] = set()


def _as_rgb_array(image: Any, name: str) -> np.ndarray:
    """A PIL image, ``(H, W[, C])`` array or ``(C, H, W)`` tensor as ``(H, W, 3)`` uint8 RGB.

    PIL images go through the file reader's conversion (:func:`mbtasks.data.image_files.to_rgb_array`:
    EXIF orientation, every mode to 8-bit RGB by its value range, unknown modes refused); arrays
    and tensors of other dtypes than uint8 by :func:`_numeric_to_uint8`. Grey images are repeated,
    alpha is dropped. An image with no pixels is refused by name.
    """
    if isinstance(image, Image.Image):
        try:
            if image.getexif().get(0x0112, 1) in range(2, 9):
                image = ImageOps.exif_transpose(image)
            array = to_rgb_array(image, name)
        except ImageReadError as err:
            raise DataError(str(err)) from err
    else:
        if isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
                raise DataError(f"{name}: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
            image = image.detach().cpu().permute(1, 2, 0).numpy()
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise DataError(f"{name}: expected an (H, W, 3) image array, got shape {array.shape}")
    if min(array.shape[:2]) < 1:
        raise DataError(f"{name}: the image is empty ({array.shape[1]}x{array.shape[0]} pixels)")
    if array.dtype != np.uint8:
        array = _numeric_to_uint8(array, name)
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
                out += [
                    Source(s.name if s.path else f"image_{i}_{j}", s.path, s.pixels)
                    for j, s in enumerate(as_sources(item))
                ]
            else:
                out.append(Source(f"image_{i}", pixels=_as_rgb_array(item, f"image_{i}")))
        return out
    raise DataError(
        f"cannot read {type(inputs).__name__} as images: expected paths, PIL images, "
        "numpy (H, W, 3) arrays or (3, H, W) tensors"
    )


def eval_pipeline(train_cfg: DictConfig):
    """The checkpoint's eval transforms (``None``: the images are used as they are)."""
    return instantiate(train_cfg.data.eval_transforms) if train_cfg.data.get("eval_transforms") else None


class Preprocess:
    """``(H, W, 3)`` uint8 -> normalised ``(3, S, S)`` float32: the run config's eval transforms, then the
    task's ``info`` mean / std (what every consumer reads).

    An eval pipeline the end-to-end export rebuilds (:func:`mbtasks.export.preprocessing.preprocessing_of`:
    a resize, or shorter side + centre crop) runs as the exported TorchScript file's own module
    (:class:`mbtasks.export.torch_pipeline.Preprocess`, float bilinear), so ``mode=predict`` and the
    exported files compute the same thing; any other pipeline runs in albumentations.
    """

    def __init__(self, train_cfg: DictConfig, info: dict) -> None:
        self.mean, self.std = tuple(info["mean"]), tuple(info["std"])
        try:
            pre = preprocessing_of(train_cfg, int(info.get("image_size", 224)), self.mean, self.std)
        except ConfigError:
            self.module, self.pipeline = None, eval_pipeline(train_cfg)
        else:
            self.module, self.pipeline = GraphPreprocess(pre), None

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if self.module is None:
            return to_tensor(apply(self.pipeline, image)["image"], self.mean, self.std)
        with warnings.catch_warnings(), torch.no_grad():
            # only read (index_select): a read-only decoded array needs no copy
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return self.module(torch.from_numpy(image)[None])[0]


def batches(
    sources: list[Source], preprocess: Preprocess, batch_size: int, skipped: dict[str, str] | None = None
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


def file_batches(
    files: list[Path], train_cfg: DictConfig, info: dict, batch_size: int, skipped: dict[str, str]
) -> Iterator[torch.Tensor]:
    """Normalised batches of image files (unreadable ones go to ``skipped``): what export verifies
    and calibrates on."""
    sources = [Source(str(p), path=p) for p in files]
    for _, _, batch in batches(sources, Preprocess(train_cfg, info), batch_size, skipped):
        yield batch
