"""What every data module shares: per-split datasets, loaders, and the count of skipped files."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, get_worker_info


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


class SplitDataModule(L.LightningDataModule):
    """A data module whose ``setup`` fills ``self.datasets`` (``train`` / ``val`` / ``test``).

    Subclasses set ``batch_size``, ``num_workers`` and, when batches need it, ``collate_fn``;
    each split's dataset carries a :class:`~mbtasks.data.io.SkipCounter` as ``skips``.
    ``test_split`` names the split the test loader reads: ``"val"`` when the data has no test
    split of its own (then the test metrics come from the split that also picked ``best.ckpt``).
    """

    collate_fn: Callable | None = None
    test_split: str = "test"

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.datasets[split]
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

    def skipped(self) -> dict[str, str]:
        """Files skipped as unreadable so far, over all splits (main-process view)."""
        out: dict[str, str] = {}
        for ds in self.datasets.values():
            out.update(ds.skips.skipped)
        return out
