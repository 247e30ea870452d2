"""Albumentations pipelines declared in YAML and applied to RGB uint8 arrays."""

from __future__ import annotations

import math
from collections.abc import Callable

import albumentations as A
import numpy as np
import torch

from mbtasks.data.box_transforms import RandomIoUCrop

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Per-pixel colour transforms: the same result at any resolution, so they may run before a resize.
_PER_PIXEL = (
    A.ColorJitter,
    A.RandomBrightnessContrast,
    A.HueSaturationValue,
    A.RGBShift,
    A.RandomGamma,
    A.ToGray,
    A.ChannelShuffle,
    A.InvertImg,
    A.Normalize,
)


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


def decode_side(pipeline: Callable | None) -> int:
    """The smallest image side ``pipeline`` needs from the decoder; 0: decode at full size.

    Read from the pipeline's first resize (``Resize``, ``SmallestMaxSize``, ``RandomResizedCrop``),
    scaled up by what comes before it: an ``RandomIoUCrop`` of ``min_scale`` needs ``1 / min_scale``
    more, an ``Affine`` zoom-in its largest scale. Per-pixel colour transforms and flips change
    nothing. Any other transform before the resize (a fixed-pixel crop, a blur, an unknown one)
    depends on the image's pixel size, so the image is decoded at full size. The side is such that
    the resize never enlarges what a full-size decode would have shrunk.
    """
    factor = 1.0
    for t in getattr(pipeline, "transforms", ()):
        if isinstance(t, _PER_PIXEL + (A.HorizontalFlip, A.VerticalFlip)):
            continue
        if isinstance(t, A.Affine) and not t.fit_output:
            factor *= max(1.0, *t.scale["x"], *t.scale["y"])  # zoom-out (scale < 1) needs nothing more
            continue
        if isinstance(t, RandomIoUCrop):
            factor /= t.min_scale
            continue
        if isinstance(t, A.Resize):
            side = max(t.height, t.width)
        elif isinstance(t, A.SmallestMaxSize) and isinstance(t.max_size, int):
            side = t.max_size
        elif isinstance(t, A.RandomResizedCrop):
            # the smallest crop (area scale[0], the most extreme aspect ratio) still covers `size`
            side = max(t.size) / math.sqrt(t.scale[0] * min(t.ratio[0], 1 / t.ratio[1]))
        else:
            return 0
        return math.ceil(side * factor)
    return 0
