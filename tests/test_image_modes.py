"""Every PIL mode decodes to 8-bit RGB with the right values, or is refused by name (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mbtasks.data.image_files import ImageReadError, to_rgb_array

# One pixel per mode family and the RGB it must give.
EXPECTED = {
    "1": (255, (255, 255, 255)),
    "L": (100, (100, 100, 100)),
    "LA": ((100, 255), (100, 100, 100)),
    "La": ((50, 128), (100, 100, 100)),  # premultiplied: 50 at alpha 128 is 100
    "P": (7, (70, 20, 30)),  # palette entry 7 (set below)
    "PA": ((7, 255), (70, 20, 30)),
    "RGB": ((10, 20, 30), (10, 20, 30)),
    "RGBA": ((10, 20, 30, 0), (10, 20, 30)),
    "RGBa": ((50, 50, 50, 128), (100, 100, 100)),
    "RGBX": ((10, 20, 30, 0), (10, 20, 30)),
    "CMYK": ((0, 255, 255, 0), (255, 0, 0)),
    "YCbCr": ((76, 85, 255), (254, 0, 0)),
    "HSV": ((0, 255, 255), (255, 0, 0)),
    "LAB": ((255, 128, 128), (255, 255, 255)),
    "I;16": (65535, (255, 255, 255)),
    "I;16L": (32896, (128, 128, 128)),
    "I;16B": (25700, (100, 100, 100)),
    "I;16N": (65535, (255, 255, 255)),
    "I": (200, (200, 200, 200)),  # within 0..255: taken as 8-bit values
    "F": (0.5, (128, 128, 128)),  # within 0..1
}


def test_every_pil_mode_is_covered():
    assert set(Image.MODES) <= set(EXPECTED), sorted(set(Image.MODES) - set(EXPECTED))


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_mode_maps_to_8bit_rgb(mode):
    value, rgb = EXPECTED[mode]
    img = Image.new(mode, (3, 2), value)
    if mode in ("P", "PA"):
        img.putpalette([v for i in range(256) for v in ((70, 20, 30) if i == 7 else (0, 0, 0))])
    out = to_rgb_array(img, f"x.{mode}")
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert tuple(int(v) for v in out[0, 0]) == pytest.approx(rgb, abs=1)


def test_palette_with_transparency_and_16bit_byte_orders_agree():
    p = Image.new("P", (2, 2), 3)
    p.info["transparency"] = 3
    assert to_rgb_array(p).shape == (2, 2, 3)
    values = np.array([[0, 257, 65535]], np.uint16)
    little = Image.frombytes("I;16", (3, 1), values.astype("<u2").tobytes())
    big = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    assert to_rgb_array(little)[0, :, 0].tolist() == to_rgb_array(big)[0, :, 0].tolist() == [0, 1, 255]


@pytest.mark.parametrize(
    "mode, values, match",
    [
        ("I", [[-1, 5]], r"pixel mode 'I' with values -1\.\.5"),
        ("I", [[0, 70000]], r"values 0\.\.70000"),
        ("F", [[0.0, -0.5]], r"pixel mode 'F' with values -0\.5\.\.0"),
        ("F", [[0.0, np.inf]], r"NaN or infinite"),
    ],
)
def test_out_of_range_numeric_images_are_refused_by_name(mode, values, match):
    arr = np.asarray(values, {"I": "<i4", "F": "<f4"}[mode])
    img = Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.tobytes())
    with pytest.raises(ImageReadError, match=match):
        to_rgb_array(img, "x.tif")
