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
        super().__init__()
        self.datasets["val"] = dataset
        self.batch_size, self.num_workers = 1, num_workers


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

    cfg = compose_cfg(["task=detection", "data=voc", "data.root=unused", "data.image_size=64"])
    full = instantiate(cfg.data.train_transforms)
    pipeline = A.Compose([t for t in full.transforms if not isinstance(t, RandomIoUCrop | A.HorizontalFlip)],
                         bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]), seed=0)
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
