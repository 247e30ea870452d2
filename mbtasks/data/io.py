"""Image file reading shared by every data module: EXIF orientation, any mode -> RGB."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class ImageReadError(ValueError):
    """An image file that exists but cannot be decoded."""


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode ``path`` to an ``(H, W, 3)`` uint8 RGB array, honouring EXIF orientation.

    Grayscale, palette, RGBA and 16-bit images are converted to RGB.

    Raises:
        ImageReadError: the file is empty, truncated or not an image (message names the file).
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I"):
                img = img.point(lambda v: v / 256).convert("L")
            return np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageReadError(f"{path}: cannot decode image ({err})") from err


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted (non-image files are ignored)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))


class SkipCounter:
    """Counts and logs (once per file) samples skipped because their file was unreadable."""

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}

    def skip(self, path: str | Path, reason: str) -> None:
        if str(path) not in self.skipped:
            log.warning("skipping unreadable image %s (%s)", path, reason)
        self.skipped[str(path)] = reason
