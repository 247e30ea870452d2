"""ImageFolder data module: ``root/{train,val,test}/<class>/<image>`` (ImageNet layout too)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mbtasks.data.base import SplitDataModule
from mbtasks.data.image_files import ImageReadError, SkipCounter, list_images, read_rgb
from mbtasks.data.transforms import IMAGENET_MEAN, IMAGENET_STD, apply, to_tensor
from mbtasks.errors import DataError


def scan_image_folder(
    split_dir: Path, class_names: list[str] | None = None
) -> tuple[list[tuple[Path, int]], list[str]]:
    """List ``(path, label)`` samples of one split; classes are the sorted sub-folder names.

    Args:
        split_dir: ``root/<split>``.
        class_names: the training classes; when given, every sub-folder must be one of them.

    Raises:
        DataError naming the folder when the layout is not usable.
    """
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: folder not found (expected <root>/<split>/<class>/<image>)")
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{split_dir}: no class folders found (expected {split_dir}/<class>/<image>)")
    names = [p.name for p in folders]
    if class_names is None:
        class_names = names
    else:
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise DataError(f"{split_dir}: classes {unknown} are not among the training classes {class_names}")
    index = {c: i for i, c in enumerate(class_names)}
    samples: list[tuple[Path, int]] = []
    for folder in folders:
        images = list_images(folder)
        if not images:
            raise DataError(f"{folder}: class folder holds no image files")
        samples.extend((p, index[folder.name]) for p in images)
    return samples, class_names


class ImageFolderDataset(Dataset):
    """``(image tensor (3, H, W), label)`` pairs; unreadable files are skipped and counted.

    ``decode_side``: the smallest side ``pipeline`` needs (JPEGs may decode smaller; 0: full size).
    """

    def __init__(
        self, samples: list[tuple[Path, int]], pipeline: Callable | None, mean, std, decode_side: int = 0
    ) -> None:
        self.samples = samples
        self.decode_side = int(decode_side)
        self.pipeline = pipeline
        self.mean, self.std = tuple(mean), tuple(std)
        self.skips = SkipCounter()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.samples)):
            path, label = self.samples[(idx + offset) % len(self.samples)]
            try:
                image = read_rgb(path, self.decode_side)
            except ImageReadError as err:
                self.skips.skip(path, str(err.__cause__ or err))
                continue
            image = apply(self.pipeline, image)["image"]
            return to_tensor(image, self.mean, self.std), label
        raise DataError(
            f"no readable image in the data set ({len(self.skips.skipped)} unreadable files, "
            f"first: {next(iter(self.skips.skipped), '-')})"
        )


class ImageFolderDataModule(SplitDataModule):
    """Train/val/test splits from ``root/<split>/<class>/*``.

    Args:
        root: data set folder.
        image_size: network input side (the paper's resolution multiplier).
        batch_size: images per batch.
        num_workers: loader processes.
        train_transforms / eval_transforms: albumentations pipelines (from YAML).
        mean / std: normalisation applied after the pipeline (stored in checkpoints).
        splits: folder names of the train, val and test splits; a missing test split
            falls back to val.
        generator: optional callable ``generator(root)`` that writes the data set first
            (the synthetic sets).
        class_names: the classes in label order (null: the train split's sub-folders, sorted); given,
            a split may hold any subset of them and the train split may be absent (evaluation only,
            e.g. an ImageNet val folder for a published classifier).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 2,
        train_transforms: Callable | None = None,
        eval_transforms: Callable | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        splits: tuple[str, str, str] = ("train", "val", "test"),
        generator: Callable | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__(
            root, image_size, batch_size, num_workers, train_transforms, eval_transforms, mean, std, generator
        )
        self.split_dirs = tuple(splits)
        self.given_classes = class_names is not None
        self.class_names: list[str] | None = list(class_names) if class_names is not None else None

    def _split_dir(self, stage: str) -> Path:
        name = dict(zip(("train", "val", "test"), self.split_dirs, strict=True))[stage]
        path = self.root / name
        if stage == "test" and not path.is_dir():
            path = self.root / self.split_dirs[1]
            self.test_split = "val"
        return path

    def setup(self, stage: str | None = None) -> None:
        if self.class_names is None:
            self.prepare_data()
            train_dir = self._split_dir("train")
            _, self.class_names = scan_image_folder(train_dir)
        for split in ("train", "val", "test"):
            if split in self.datasets:
                continue
            if split == "train" and self.given_classes and not self._split_dir(split).is_dir():
                continue  # evaluation only: the classes are known without a training split
            samples, _ = scan_image_folder(self._split_dir(split), self.class_names)
            pipeline = self.train_transforms if split == "train" else self.eval_transforms
            self.datasets[split] = ImageFolderDataset(
                samples, pipeline, self.mean, self.std, self.min_side_for(pipeline)
            )

    def describe(self) -> dict:
        """What ``setup`` found, for ``mode=check``: the classes and each split's ``(path, label)`` samples."""
        return {
            "root": str(self.root),
            "class_names": list(self.class_names),
            "splits": {split: list(ds.samples) for split, ds in self.datasets.items()},
        }

    @property
    def info(self) -> dict:
        """What a checkpoint must remember about the data to predict without it."""
        if self.class_names is None:
            self.setup()
        return {
            "class_names": list(self.class_names),
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }
