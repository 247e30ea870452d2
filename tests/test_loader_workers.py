"""Loader workers: one OpenCV thread each, safely (no pool resize inside a forked worker), still seeded apart."""

from __future__ import annotations

import cv2
import numpy as np
from torch.utils.data import Dataset

from mbtasks.data.base import SplitDataModule


class Probe(Dataset):
    """What a worker sees: OpenCV's thread count and a draw from numpy's global generator."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, idx: int) -> tuple[int, int]:
        return cv2.getNumThreads(), int(np.random.randint(1 << 30))


def test_workers_run_opencv_single_threaded_and_draw_apart():
    cv2.setNumThreads(2)
    # Run the parent's pool first: resizing it inside a forked worker would then deadlock.
    cv2.GaussianBlur(np.random.rand(512, 512, 3).astype(np.float32), (9, 9), 0)
    dm = SplitDataModule(root=".", image_size=32, batch_size=1, num_workers=2)
    dm.datasets = {"train": Probe()}
    threads, draws = zip(*[(int(t), int(d)) for t, d in dm.train_dataloader()], strict=True)
    assert set(threads) == {1}
    assert len(set(draws)) == len(draws)  # Lightning-free loaders still seed workers apart (torch)
