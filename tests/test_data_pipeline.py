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
