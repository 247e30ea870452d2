"""Image file reading shared by every data module: EXIF orientation, every PIL mode -> 8-bit RGB,
decoder limits, reduced-size JPEG decoding.

Reduced-size decoding: a reader that is told the smallest side its transforms need (``min_side``)
lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale (PIL's ``Image.draft``) as long as both sides
stay >= ``min_side``; the IDCT then runs on a fraction of the pixels. Other formats decode at
full size.

Decoder limits (PIL's own, kept): an image above ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (89,478,485,
about 9459 x 9459; read at call time, so a script may raise it) is refused from its header, before
any pixel is decoded; a PNG text chunk that inflates past ``PngImagePlugin.MAX_TEXT_CHUNK`` (1 MiB)
is refused by PIL; truncated files are refused (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# Modes PIL converts to RGB itself (colour spaces, palettes, alpha, 1-bit); "La" goes through "LA".
_PIL_CONVERTS = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
# Single-channel modes mapped to 8 bits here from their value range (PIL's own convert clips them).
_NUMERIC = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


class ImageReadError(ValueError):
    """An image file that exists but cannot be decoded."""


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def inside_folder(name: str) -> bool:
    """False for a ``file_name`` that is absolute or climbs out of the image folder with ``..``."""
    pure = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not pure.is_absolute() and ".." not in pure.parts and not PureWindowsPath(name).drive


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open`` that turns every decoder failure inside the block into :class:`ImageReadError`.

    PIL's plugins raise more than ``OSError`` on hostile files (``DecompressionBombError``,
    ``ValueError`` for inflating text chunks, ``SyntaxError``, ``EOFError``, ``struct.error``,
    ``MemoryError``...), so any exception is a decoding failure of this one file.
    """
    try:
        with warnings.catch_warnings():
            # Refused below by the same limit, with a message naming the file.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                limit = Image.MAX_IMAGE_PIXELS
                if limit and img.width * img.height > limit:
                    raise ImageReadError(
                        f"{path}: {img.width}x{img.height} pixels is above the decoder limit of "
                        f"{limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
                    )
                yield img
    except ImageReadError:
        raise
    except FileNotFoundError as err:
        raise ImageReadError(f"{path}: file not found") from err
    except Exception as err:  # noqa: BLE001 - see the docstring
        raise ImageReadError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err


def _value_range_to_uint8(img: Image.Image, path: str | Path) -> np.ndarray:
    """A 16-bit, 32-bit integer or float single-channel image as ``(H, W)`` uint8.

    16-bit modes scale 0..65535 to 0..255. Modes ``I`` and ``F`` carry no range, so it is read
    from the values: all within [0, 1] (float only) is taken as 0..1, within [0, 255] as 8-bit,
    within [0, 65535] as 16-bit; negative, larger or non-finite values are refused.
    """
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        top = 65535.0
    else:
        if not np.isfinite(arr).all():
            raise ImageReadError(f"{path}: pixel mode {img.mode!r} holds NaN or infinite values")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 65535:
            raise ImageReadError(
                f"{path}: pixel mode {img.mode!r} with values {lo:g}..{hi:g}: expected values "
                "in [0, 1], [0, 255] or [0, 65535] to map to 8 bits"
            )
        top = 1.0 if img.mode == "F" and hi <= 1 else 255.0 if hi <= 255 else 65535.0
    return np.rint(arr * (255.0 / top)).astype(np.uint8)


def to_rgb_array(img: Image.Image, path: str | Path = "<image>") -> np.ndarray:
    """Any PIL image as an ``(H, W, 3)`` uint8 RGB array; modes that cannot be mapped are refused by name."""
    if img.mode in _NUMERIC:
        grey = _value_range_to_uint8(img, path)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode not in _PIL_CONVERTS:
        raise ImageReadError(
            f"{path}: pixel mode {img.mode!r} is not supported (expected one of {sorted(_PIL_CONVERTS | _NUMERIC)})"
        )
    if img.mode == "La" or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("LA" if img.mode == "La" else "RGBA")  # PIL's supported path to RGB
    if img.mode != "RGB":  # convert() copies even RGB -> RGB; a 20-megapixel copy is not free
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_rgb(path: str | Path, min_side: int = 0) -> np.ndarray:
    """Decode ``path`` to an ``(H, W, 3)`` uint8 RGB array, honouring EXIF orientation.

    Every PIL mode is mapped to 8-bit RGB (see :func:`to_rgb_array`); the decoder limits are
    in the module docstring. ``min_side``: see :func:`read_rgb_sized`.

    Raises:
        ImageReadError: empty, truncated, too large, not an image, or a pixel format that cannot
            be mapped (the message names the file).
    """
    return read_rgb_sized(path, min_side)[0]


def read_rgb_sized(path: str | Path, min_side: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_rgb` that may decode a JPEG at reduced size, and says the full size.

    Args:
        path: image file.
        min_side: the smallest side the caller needs; > 0 lets a JPEG decode at 1/2, 1/4 or 1/8
            scale while both of its sides stay >= ``min_side``. 0: full size.

    Returns:
        ``(image, (width, height))``: the ``(h, w, 3)`` uint8 RGB array (``h``, ``w`` are the
        full-size ``height``, ``width`` divided by the decoder's scale, rounded up) and the
        full-resolution size after EXIF orientation, so callers can scale coordinates given in
        full-size pixels by ``w / width``, ``h / height``.

    Raises:
        ImageReadError: as :func:`read_rgb`.
    """
    with open_image(path) as img:
        width, height = img.size
        if min_side > 0:
            img.draft(None, (int(min_side), int(min_side)))  # before any pixel is read; no-op unless JPEG
        orientation = img.getexif().get(0x0112, 1)
        if orientation in range(2, 9):  # exif_transpose copies even when there is nothing to turn
            img = ImageOps.exif_transpose(img)
            if orientation >= 5:
                width, height = height, width
        out = to_rgb_array(img, path)
    if out.ndim != 3 or out.shape[2] != 3 or min(out.shape[:2]) < 1:
        raise ImageReadError(f"{path}: decoded to an array of shape {out.shape}, expected (H, W, 3)")
    return out, (int(width), int(height))


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted (non-image files are ignored)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))


class SkipCounter:
    """Counts and logs (once per file) samples skipped because their file was unreadable."""

    def __init__(self, what: str = "skipping unreadable image") -> None:
        self.what = what
        self.skipped: dict[str, str] = {}

    def skip(self, path: str | Path, reason: str) -> None:
        if str(path) not in self.skipped:
            log.warning("%s %s (%s)", self.what, path, reason)
        self.skipped[str(path)] = reason
