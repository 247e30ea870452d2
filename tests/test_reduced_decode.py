"""Reduced-size JPEG decoding: decoded sizes, full-size reporting, EXIF, colour, exact boxes, wiring."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from mbtasks.data.box_transforms import RandomIoUCrop
from mbtasks.data.detection import DetectionDataset, ImageRecord
from mbtasks.data.image_files import read_rgb, read_rgb_sized
from mbtasks.data.transforms import decode_side
from tests.conftest import compose_cfg

NORM = ((0.5,) * 3, (0.5,) * 3)


def two_colour(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: orientation shows in which side is red."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def jpeg(path: Path, img: Image.Image, **kw) -> Path:
    img.save(path, "JPEG", quality=95, **kw)
    return path


@pytest.mark.parametrize(
    "min_side, shape", [(0, (300, 400)), (100, (150, 200)), (40, (75, 100)), (10, (38, 50)), (301, (300, 400))]
)
def test_jpeg_decodes_at_the_largest_reduction_that_keeps_min_side(tmp_path, min_side, shape):
    path = jpeg(tmp_path / "a.jpg", two_colour(400, 300))
    image, size = read_rgb_sized(path, min_side)
    assert image.shape == (*shape, 3) and image.dtype == np.uint8
    assert size == (400, 300)
    assert min(image.shape[:2]) >= min(min_side, 300)
    # the same picture: red left, blue right
    assert image[:, 0, 0].min() > 200 and image[:, -1, 2].min() > 200


def test_other_formats_decode_at_full_size(tmp_path):
    two_colour(400, 300).save(tmp_path / "a.png")
    image, size = read_rgb_sized(tmp_path / "a.png", 50)
    assert image.shape == (300, 400, 3) and size == (400, 300)
    np.testing.assert_array_equal(image, read_rgb(tmp_path / "a.png"))


def test_exif_orientation_with_reduced_decode(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 400x200, shown turned 90 degrees clockwise: 200x400, red on top
    path = jpeg(tmp_path / "r.jpg", two_colour(400, 200), exif=exif)
    full = read_rgb(path)
    image, size = read_rgb_sized(path, 50)
    assert full.shape == (400, 200, 3) and size == (200, 400)
    assert image.shape == (100, 50, 3)  # stored 400x200 at 1/4, then turned
    assert image[0, :, 0].min() > 200 and image[-1, :, 2].min() > 200  # red top, blue bottom, as full size
    assert full[0, :, 0].min() > 200 and full[-1, :, 2].min() > 200


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_colour_conversion_with_reduced_decode(tmp_path, mode):
    path = jpeg(tmp_path / "c.jpg", two_colour(320, 240).convert(mode))
    image, size = read_rgb_sized(path, 60)
    assert image.shape == (60, 80, 3) and size == (320, 240)
    reference = np.asarray(Image.fromarray(read_rgb(path)).resize((80, 60), Image.BOX)).astype(int)
    assert np.abs(image.astype(int) - reference).mean() < 6
    if mode == "L":
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def box_image(tmp_path: Path, exif_orientation: int = 1) -> tuple[Path, np.ndarray]:
    """An 800x600 JPEG, white box at x1y1x2y2 (200, 150, 600, 450) on black."""
    arr = np.zeros((600, 800, 3), np.uint8)
    arr[150:450, 200:600] = 255
    kw = {}
    if exif_orientation != 1:
        kw["exif"] = Image.Exif()
        kw["exif"][0x0112] = exif_orientation
    return jpeg(tmp_path / "b.jpg", Image.fromarray(arr), **kw), np.array([[200, 150, 600, 450]], np.float32)


def record(path: Path, boxes: np.ndarray, width: int, height: int) -> ImageRecord:
    return ImageRecord(
        0,
        path,
        width,
        height,
        boxes,
        np.zeros(len(boxes), np.int64),
        np.zeros(len(boxes), bool),
        np.zeros(len(boxes), np.float32),
    )


@pytest.mark.parametrize("train", [True, False])
def test_boxes_are_exact_after_reduced_decode(tmp_path, train):
    path, boxes = box_image(tmp_path)
    pipeline = A.Compose(
        [A.Resize(64, 64)], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]) if train else None
    )
    full = DetectionDataset([record(path, boxes, 800, 600)], pipeline, 64, *NORM, train=train)
    reduced = DetectionDataset(
        [record(path, boxes, 800, 600)], pipeline, 64, *NORM, train=train, decode_side=decode_side(pipeline)
    )
    assert decode_side(pipeline) == 64
    (x_full, t_full), (x, t) = full[0], reduced[0]
    expected = boxes * np.array([64 / 800, 64 / 600] * 2, np.float32)
    np.testing.assert_allclose(t["boxes"].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(t_full["boxes"].numpy(), expected, atol=1e-4)
    assert t["orig_size"] == t_full["orig_size"] == (600, 800)  # predictions map back to full-size pixels
    if not train:
        np.testing.assert_array_equal(t["gt_boxes"].numpy(), boxes)
    # the white box sits where the target says, as in the full-size decode
    x1, y1, x2, y2 = expected[0].round().astype(int)
    assert x[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 0.9 and x[:, : y1 - 1].max() < -0.9
    assert (x - x_full).abs().mean() < 0.05


def test_boxes_of_an_exif_turned_image_after_reduced_decode(tmp_path):
    """Annotated on the shown (turned) pixels: the full-size size the reader reports keeps boxes exact."""
    arr = np.zeros((600, 800, 3), np.uint8)  # stored 800x600 with orientation 8 (turned 90 counter-clockwise)
    shown = np.zeros((800, 600, 3), np.uint8)
    shown[100:300, 150:450] = 255  # the box on the shown image: x 150..450, y 100..300
    arr[:] = np.rot90(shown, k=-1)  # what the camera stored
    exif = Image.Exif()
    exif[0x0112] = 8
    path = jpeg(tmp_path / "t.jpg", Image.fromarray(arr), exif=exif)
    boxes = np.array([[150, 100, 450, 300]], np.float32)
    pipeline = A.Compose([A.Resize(64, 64)])
    ds = DetectionDataset([record(path, boxes, 600, 800)], pipeline, 64, *NORM, train=False, decode_side=64)
    x, t = ds[0]
    assert ds.decode_side == 64 and t["orig_size"] == (800, 600) and not ds.rescaled.skipped
    expected = boxes * np.array([64 / 600, 64 / 800] * 2, np.float32)
    np.testing.assert_allclose(t["boxes"].numpy(), expected, atol=1e-4)
    x1, y1, x2, y2 = expected[0].round().astype(int)
    assert x[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 0.9


def test_decode_side_from_the_configured_pipelines():
    side = {}
    for name, overrides in {
        "cls": ["data=imagefolder"],
        "det": ["task=detection", "data=voc"],
        "emb": ["task=embedding", "data=faces"],
    }.items():
        cfg = compose_cfg([*overrides, "data.root=x", "data.image_size=224"])
        side[name] = (
            decode_side(instantiate(cfg.data.train_transforms)),
            decode_side(instantiate(cfg.data.eval_transforms)),
        )
    # RandomResizedCrop at scale 0.25, ratio 3/4: 224 / sqrt(0.25 * 0.75); the eval resize to 256
    assert side["cls"] == (518, 256)
    assert side["det"] == (224, 224)  # the SSD pipeline resizes to the input square first
    # an IoU crop of min_scale 0.3 in front of the resize needs 1 / 0.3 more
    assert decode_side(A.Compose([RandomIoUCrop(min_scale=0.3), A.Resize(224, 224)])) == 747
    assert side["emb"] == (224, 224)
    assert decode_side(None) == 0
    assert decode_side(A.Compose([A.CenterCrop(32, 32), A.Resize(16, 16)])) == 0  # pixel crop: full size
    assert decode_side(A.Compose([A.GaussianBlur(), A.Resize(16, 16)])) == 0
    assert decode_side(A.Compose([A.ColorJitter(), A.HorizontalFlip(), A.Resize(16, 32)])) == 32
    assert decode_side(A.Compose([A.Affine(scale=(0.5, 2.0)), A.Resize(16, 16)])) == 32


def test_data_module_passes_the_side_and_can_switch_it_off(tiny_shapes):
    cfg = compose_cfg(["data=imagefolder", f"data.root={tiny_shapes}", "data.image_size=32"])
    dm = instantiate(cfg.data)
    dm.reduced_decode = True
    dm.setup("fit")
    assert dm.datasets["train"].decode_side == 74 and dm.datasets["val"].decode_side == 37
    off = instantiate(cfg.data)  # off by default: every mode decodes at full size
    off.setup("fit")
    assert off.datasets["train"].decode_side == off.datasets["val"].decode_side == 0
