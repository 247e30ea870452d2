"""What every data module shares: per-split datasets, loaders, and the count of skipped files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, get_worker_info

from mbtasks.data.transforms import IMAGENET_MEAN, IMAGENET_STD, decode_side
from mbtasks.settings import Settings, setting


@dataclass(frozen=True, kw_only=True)
class LoaderSettings(Settings):
    """The ``data.*`` numbers the data modules take, checked at start-up (``mbtasks.config.validate``)
    before any data is read or written; a module without the key (null) is not checked."""

    section: ClassVar[str] = "data"
    batch_size: int | None = setting(integer=True, low=1, optional=True, example="32")
    num_workers: int | None = setting(integer=True, low=0, optional=True, example="0 or 2")
    # share of the training images held out when there is no val split
    val_fraction: float | None = setting(low=0, low_in=False, high=1.0, optional=True, example="0.1")


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: give each worker its own augmentation stream.

    albumentations pipelines hold their own RNG, created when the pipeline is built; forked
    workers inherit one state, so without this every worker draws the same augmentations
    (AlbumentationsX issue 266). Each pipeline the worker's dataset holds is re-seeded from
    the worker's seed, which torch derives from the loader's base seed (so ``seed`` still
    reproduces a run). numpy / random / torch are seeded as ``seed_everything(workers=True)``
    would: Lightning adds its own ``worker_init_fn`` only to loaders that have none.
    """
    pl_worker_init_function(worker_id)
    info = get_worker_info()
    seed = info.seed % 2**32
    for value in vars(info.dataset).values():
        if callable(getattr(value, "set_random_seed", None)):
            value.set_random_seed(seed)


def limit_worker_threads() -> None:
    """Make loader workers run OpenCV (albumentations) on one thread, as torch already does in them.

    OpenCV's pool is as wide as the machine in every worker: N workers next to the training
    process oversubscribe the cores. Called in the main process before workers start, as forked
    workers inherit the setting: resizing the pool inside a forked worker deadlocks once the
    parent's pool has run (seen in the test suite). With workers, the main process runs no
    augmentation, so its own pool is not needed.
    """
    cv2.setNumThreads(1)


class DataModuleBase(L.LightningDataModule):
    """What every data module takes and offers: root, input size, loaders' workers, the two
    albumentations pipelines, normalisation, an optional generator; ``skipped()`` / ``rescaled()``
    for the run's metrics and ``describe()`` for ``mode=check``.

    ``test_split`` names the split the test loader reads: ``"val"`` when the data has no test
    split of its own (then the test metrics come from the split that also picked ``best.ckpt``).

    Args:
        root: the data set folder.
        image_size: network input side (the paper's resolution multiplier).
        num_workers: loader processes.
        train_transforms / eval_transforms: albumentations pipelines (from YAML).
        mean / std: normalisation applied after the pipeline (stored in checkpoints).
        generator: optional ``generator(root)`` that writes the data set first (the synthetic sets).
    """

    test_split: str = "test"
    # True: decode JPEGs at the smallest size the transforms need (io.read_rgb_sized). Off: predict and
    # export decode at full size, and reduced decoding changed 15 of 83 ImageNet top-1 answers
    # (benchmarks/export_parity.py), so every mode decodes the same way.
    reduced_decode: bool = False

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        num_workers: int = 2,
        train_transforms: Callable | None = None,
        eval_transforms: Callable | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        generator: Callable | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.image_size = int(image_size)
        self.num_workers = num_workers
        self.train_transforms = train_transforms
        self.eval_transforms = eval_transforms
        self.mean, self.std = tuple(mean), tuple(std)
        self.generator = generator

    def prepare_data(self) -> None:
        if self.generator is not None:
            self.generator(self.root)

    def min_side_for(self, pipeline: Callable | None) -> int:
        """The ``min_side`` a split's reader gets: what ``pipeline`` needs (0: full size)."""
        return decode_side(pipeline) if self.reduced_decode else 0

    def splits(self) -> list[Dataset]:
        """The datasets ``setup`` made (each carries a :class:`~mbtasks.data.image_files.SkipCounter` as ``skips``)."""
        raise NotImplementedError

    def skipped(self) -> dict[str, str]:
        """Files skipped as unreadable so far, over all splits (main-process view)."""
        out: dict[str, str] = {}
        for ds in self.splits():
            out.update(ds.skips.skipped)
        return out

    def rescaled(self) -> dict[str, str]:
        """Images whose boxes were rescaled to their decoded size (detection), by file."""
        return {}

    def describe(self) -> dict:
        """What ``setup`` found, for ``mode=check`` (the task's ``check_data`` reads it)."""
        raise NotImplementedError


class SplitDataModule(DataModuleBase):
    """A data module whose ``setup`` fills ``self.datasets`` (``train`` / ``val`` / ``test``).

    Args:
        batch_size: images per batch (every split).
        Other arguments: see :class:`DataModuleBase`.
    """

    collate_fn: Callable | None = None

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        batch_size: int,
        num_workers: int = 2,
        train_transforms: Callable | None = None,
        eval_transforms: Callable | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        generator: Callable | None = None,
    ) -> None:
        super().__init__(root, image_size, num_workers, train_transforms, eval_transforms, mean, std, generator)
        self.batch_size = batch_size
        self.datasets: dict[str, Dataset] = {}

    def splits(self) -> list[Dataset]:
        return list(self.datasets.values())

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.datasets[split]
        if self.num_workers > 0:
            limit_worker_threads()
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(ds) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=self.collate_fn,
            worker_init_fn=seed_worker,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
