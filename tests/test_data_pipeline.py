"""Data-pipeline correctness on real-format tiny data: worker seeding, zoom-out, EXIF boxes."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from mbtasks.data.base import SplitDataModule
from mbtasks.data.imagefolder import ImageFolderDataset


class _OneSplit(SplitDataModule):
    def __init__(self, dataset, num_workers: int) -> None:
        super().__init__(root=".", image_size=32, batch_size=1, num_workers=num_workers)
        self.datasets["val"] = dataset


def test_loader_workers_draw_different_augmentations(tmp_path):
    # Forked workers inherit the pipeline's RNG; without re-seeding, samples 0 and 1 (one per worker) match.
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    pipeline = A.Compose([A.Affine(rotate=(-45, 45), scale=(0.5, 1.5), p=1.0)])
    ds = ImageFolderDataset([(tmp_path / "a.png", 0)] * 4, pipeline, (0, 0, 0), (1, 1, 1))
    images = [x for x, _ in _OneSplit(ds, num_workers=2).val_dataloader()]
    assert not torch.equal(images[0], images[1])
    assert not torch.equal(images[2], images[3])


def test_ssd_zoom_out_keeps_aspect_ratio_and_the_whole_image():
    # A box around the whole 160x80 image must come out square (the image is resized to 64x64)
    # and whole, at any zoom; the IoU crop is left out so only the zoom out moves it.
    from hydra.utils import instantiate

    from mbtasks.data.box_transforms import RandomIoUCrop
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["task=detection", "data=voc", "data.root=unused", "data.image_size=64", "augment=ssd"])
    full = instantiate(cfg.data.train_transforms)
    pipeline = A.Compose(
        [t for t in full.transforms if not isinstance(t, RandomIoUCrop | A.HorizontalFlip)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
        seed=0,
    )
    image = np.full((80, 160, 3), 200, np.uint8)
    sides = []
    for _ in range(100):
        out = pipeline(image=image, bboxes=np.array([[0, 0, 160, 80]], np.float32), labels=np.array([0]))
        assert out["image"].shape == (64, 64, 3)
        x1, y1, x2, y2 = out["bboxes"][0]
        assert x2 - x1 == pytest.approx(y2 - y1, abs=1.0), out["bboxes"]
        # the whole image is on the canvas: the pasted region holds exactly the box's pixels
        inside = (out["image"][..., 0] > 150).sum()
        assert inside == pytest.approx((x2 - x1) * (y2 - y1), rel=0.1)
        sides.append(x2 - x1)
    assert min(sides) < 32 and max(sides) == pytest.approx(64)


def _write_oriented(path, orientation: int, box=(10, 5, 30, 45), size=(80, 60)) -> None:
    """A black ``size`` image (stored pixels) with ``box`` painted white and an EXIF orientation tag."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_move_with_exif_orientation_like_the_image(tmp_path, orientation):
    from mbtasks.data.detection import orient_boxes
    from mbtasks.data.image_files import read_rgb

    _write_oriented(tmp_path / "a.png", orientation)
    ys, xs = np.nonzero(read_rgb(tmp_path / "a.png")[..., 0] > 127)
    painted = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert orient_boxes(np.array([[10, 5, 30, 45]]), orientation, 80, 60).tolist() == [painted]


@pytest.mark.parametrize("train", [False, True])
def test_exif_rotated_image_gets_rotated_boxes_not_stretched_ones(tmp_path, train):
    # The case: [10,5,30,45] on an 80x60 image with orientation 6 is [15,10,55,30] once turned.
    from mbtasks.data.detection import DetectionDataset, ImageRecord

    _write_oriented(tmp_path / "a.png", 6)
    rec = ImageRecord(
        1,
        tmp_path / "a.png",
        80,
        60,
        boxes=np.array([[10, 5, 30, 45]], np.float32),
        labels=np.array([0]),
        iscrowd=np.array([False]),
        areas=np.array([800], np.float32),
    )
    bbox = A.BboxParams(format="pascal_voc", label_fields=["labels"]) if train else None
    pipeline = A.Compose([A.Resize(120, 120)], bbox_params=bbox)
    _, target = DetectionDataset([rec], pipeline, 120, (0, 0, 0), (1, 1, 1), train=train)[0]
    assert target["orig_size"] == (80, 60)
    # network input pixels: x * 120/60, y * 120/80
    assert target["boxes"][0].tolist() == pytest.approx([30, 15, 110, 45])
    if not train:
        assert target["gt_boxes"].tolist() == [[15, 10, 55, 30]]


def test_check_counts_exif_rotated_images(tmp_path):
    from tests.conftest import run_mode

    for split, stems in (("train", "abc"), ("test", "d")):
        for i, stem in enumerate(stems):
            folder = tmp_path / split
            folder.mkdir(exist_ok=True)
            _write_oriented(folder / f"{stem}.jpg", 6 if i == 0 else 1)
            (folder / f"{stem}.xml").write_text(
                f"<annotation><filename>{stem}.jpg</filename><size><width>80</width><height>60</height></size>"
                "<object><name>box</name><bndbox><xmin>10</xmin><ymin>5</ymin><xmax>30</xmax><ymax>45</ymax>"
                "</bndbox></object></annotation>"
            )
    report = run_mode(
        [
            "mode=check",
            "task=detection",
            "data=voc",
            f"data.root={tmp_path}",
            "data.image_size=64",
            "data.val_fraction=0.34",
        ],
        tmp_path / "run",
    )
    assert report["ok"]
    assert sum(s["exif_rotated"] for s in report["splits"].values()) == 2
    assert any("2 images carry an EXIF rotation" in w for w in report["warnings"])
