"""Identity-folder data module for the embedding task: ``root/<identity>/<image>``.

The layout of LFW, VGGFace2 and CASIA-WebFace after alignment. Identities (never
images) are split into train, validation and test, so the evaluation measures how
the embedding generalises to people it never saw. Training batches are P identities x
K images (:class:`~mbtasks.data.samplers.PKBatchSampler`); evaluation is verification
on pairs of held-out images (:mod:`mbtasks.data.pairs`), generated deterministically or
read from an LFW ``pairs.txt`` for the test split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mbtasks.data.base import DataModuleBase, limit_worker_threads, seed_worker
from mbtasks.data.image_files import ImageReadError, SkipCounter, list_images, read_rgb
from mbtasks.data.pairs import PairSet, generate_pairs, read_pairs
from mbtasks.data.samplers import PKBatchSampler
from mbtasks.data.transforms import IMAGENET_MEAN, IMAGENET_STD, apply, to_tensor
from mbtasks.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def scan_identities(root: str | Path) -> dict[str, list[Path]]:
    """``{identity: sorted image paths}`` for every sub-folder of ``root`` that holds images.

    Raises:
        DataError: the folder is missing or has no identity folders with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (expected {root}/<identity>/<image>)")
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = list_images(folder)
        if images:
            out[folder.name] = images
    if not out:
        raise DataError(f"{root}: no identity folders with images (expected {root}/<identity>/<image>)")
    return out


def _count(spec: float | int, total: int, key: str) -> int:
    """A split size given as a fraction of ``total`` (float < 1) or a number of identities (int)."""
    if isinstance(spec, bool) or not isinstance(spec, int | float) or spec < 0:
        raise ConfigError(f"{key}={spec!r}: expected a fraction in (0, 1) or a number of identities")
    return int(round(spec * total)) if isinstance(spec, float) and spec < 1 else int(spec)


def split_identities(
    identities: Mapping[str, list[Path]], val: float | int, test: float | int, seed: int = 0
) -> tuple[list[str], list[str], list[str]]:
    """Split identity names into disjoint train / val / test lists, deterministically.

    Identities with >= 2 images and those with one are shuffled apart and dealt in the
    same proportions, so each split gets identities that can form positive pairs.

    Args:
        identities: ``{name: images}``.
        val / test: split sizes, each a fraction (float < 1) or a count (int) of identities.
        seed: shuffling seed.

    Raises:
        DataError: a split would lack what it needs (counts named).
    """
    names = sorted(identities)
    multi = [n for n in names if len(identities[n]) >= 2]
    single = [n for n in names if len(identities[n]) < 2]
    n_val, n_test = _count(val, len(names), "data.val_identities"), _count(test, len(names), "data.test_identities")
    if n_val + n_test >= len(names):
        raise DataError(
            f"{len(names)} identities cannot give {n_val} validation and {n_test} test identities "
            "and still leave some for training (lower data.val_identities / data.test_identities)"
        )
    rng = np.random.default_rng(seed)
    multi = [str(n) for n in rng.permutation(multi)]
    single = [str(n) for n in rng.permutation(single)]
    share = len(multi) / len(names)
    splits = []
    for n in (n_val, n_test):
        m = min(len(multi), max(1, round(n * share))) if n else 0
        s = min(len(single), n - m)
        splits.append(multi[:m] + single[:s])
        multi, single = multi[m:], single[s:]
    train = sorted(multi + single)
    val_names, test_names = (sorted(s) for s in splits)
    if sum(len(identities[n]) >= 2 for n in train) < 2:
        raise DataError(
            f"after holding out {len(val_names)} validation and {len(test_names)} test identities, "
            "training has fewer than 2 identities with >= 2 images"
        )
    return train, val_names, test_names


class IdentityDataset(Dataset):
    """Training samples ``(image (3, H, W), identity label)``.

    An unreadable file is named, counted and replaced by another image of the same
    identity, so labels stay right.
    """

    def __init__(
        self, samples: list[tuple[Path, int]], pipeline: Callable | None, mean, std, decode_side: int = 0
    ) -> None:
        self.samples = samples
        self.decode_side = int(decode_side)  # JPEGs may decode down to this side (0: full size)
        self.labels = [label for _, label in samples]
        self.by_label: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels):
            self.by_label.setdefault(label, []).append(i)
        self.pipeline = pipeline
        self.mean, self.std = tuple(mean), tuple(std)
        self.skips = SkipCounter()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        label = self.labels[idx]
        group = self.by_label[label]
        start = group.index(idx)
        for offset in range(len(group)):
            path, _ = self.samples[group[(start + offset) % len(group)]]
            try:
                image = read_rgb(path, self.decode_side)
            except ImageReadError as err:
                self.skips.skip(path, str(err.__cause__ or err))
                continue
            return to_tensor(apply(self.pipeline, image)["image"], self.mean, self.std), label
        raise DataError(f"no readable image of identity {label} (first: {self.samples[group[0]][0]})")


class EvalImageDataset(Dataset):
    """Evaluation samples ``(image (3, H, W), index, readable)``; unreadable files give zeros.

    The task drops the embeddings of unreadable images and the pairs that use them.
    """

    def __init__(
        self, images: list[Path], pipeline: Callable | None, mean, std, image_size: int, decode_side: int = 0
    ) -> None:
        self.images = images
        self.decode_side = int(decode_side)  # JPEGs may decode down to this side (0: full size)
        self.pipeline = pipeline
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = image_size
        self.skips = SkipCounter()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int, bool]:
        try:
            image = read_rgb(self.images[idx], self.decode_side)
        except ImageReadError as err:
            self.skips.skip(self.images[idx], str(err.__cause__ or err))
            return torch.zeros(3, self.image_size, self.image_size), idx, False
        return to_tensor(apply(self.pipeline, image)["image"], self.mean, self.std), idx, True


class FacesDataModule(DataModuleBase):
    """Identity folders split by identity; P x K training batches; verification pairs for evaluation.

    Args:
        root: ``root/<identity>/<image>`` training (and by default evaluation) identities.
        image_size: network input side (any >= 32; 112 is the common face size).
        identities_per_batch: P, identities in a training batch.
        images_per_identity: K, images of each identity in a training batch.
        batches_per_epoch: training batches per epoch; default covers each image once.
        eval_batch_size: images per evaluation batch.
        num_workers: loader processes.
        train_transforms / eval_transforms: albumentations pipelines (from YAML).
        mean / std: normalisation after the pipeline (stored in checkpoints).
        val_identities / test_identities: held-out identities, a fraction (float < 1) or a
            count (int); ``test_identities`` is unused when ``test_pairs`` is given.
        num_folds: folds of the verification protocol (LFW: 10).
        pairs_per_fold: generated pairs per fold, half same-identity, half not.
        test_pairs: a pairs file for the test split: LFW ``pairs.txt`` (View 2), CALFW / CPLFW
            ``pairs_*.txt``, or an insightface ``.bin`` pack (``agedb_30.bin``...; :mod:`mbtasks.data.pairs`).
        test_root: folder of the ``test_pairs`` images (default ``root``); when it is
            ``root``, the identities named in the pairs are kept out of training.
        split_seed: seed of the identity split and of the generated pairs.
        generator: optional ``generator(root)`` writing the data first (synthetic faces).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 128,
        identities_per_batch: int = 16,
        images_per_identity: int = 4,
        batches_per_epoch: int | None = None,
        eval_batch_size: int = 128,
        num_workers: int = 2,
        train_transforms: Callable | None = None,
        eval_transforms: Callable | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        val_identities: float | int = 0.1,
        test_identities: float | int = 0.1,
        num_folds: int = 10,
        pairs_per_fold: int = 600,
        test_pairs: str | None = None,
        test_root: str | None = None,
        split_seed: int = 0,
        generator: Callable | None = None,
    ) -> None:
        super().__init__(root, image_size, num_workers, train_transforms, eval_transforms, mean, std, generator)
        self.p, self.k = identities_per_batch, images_per_identity
        self.batches_per_epoch = batches_per_epoch
        self.eval_batch_size = eval_batch_size
        self.val_identities, self.test_identities = val_identities, test_identities
        if num_folds < 2:
            raise ConfigError(f"data.num_folds={num_folds}: the protocol needs >= 2 folds (LFW uses 10)")
        self.num_folds, self.pairs_per_fold = num_folds, pairs_per_fold
        self.test_pairs = Path(test_pairs) if test_pairs else None
        self.test_root = Path(test_root) if test_root else self.root
        self.split_seed = split_seed
        self.train_set: IdentityDataset | None = None
        self.pair_sets: dict[str, PairSet] = {}
        self.eval_sets: dict[str, EvalImageDataset] = {}
        self.stats: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()
        identities = scan_identities(self.root)
        multi = sum(len(v) >= 2 for v in identities.values())
        if multi < 2:
            raise DataError(
                f"{self.root}: needs at least 2 identities with >= 2 images each, found {multi} "
                f"(of {len(identities)} identities)"
            )
        test_set = None
        if self.test_pairs is not None:
            test_set = read_pairs(self.test_pairs, self.test_root, self.num_folds)
            if self.test_root.resolve() == self.root.resolve():
                named = set(test_set.identities)
                identities = {k: v for k, v in identities.items() if k not in named}
        train, val, test = split_identities(
            identities, self.val_identities, 0 if test_set else self.test_identities, self.split_seed
        )
        if len(val) < 2:
            raise DataError(
                f"{self.root}: data.val_identities={self.val_identities!r} holds out {len(val)} "
                "identities; verification needs >= 2 (raise it)"
            )
        if test_set is None:
            if len(test) < 2:
                raise DataError(
                    f"{self.root}: data.test_identities={self.test_identities!r} holds out "
                    f"{len(test)} identities; verification needs >= 2 (raise it, or give data.test_pairs)"
                )
            test_set = generate_pairs(
                {n: identities[n] for n in test}, self.num_folds, self.pairs_per_fold, self.split_seed + 2
            )
        self.pair_sets = {
            "val": generate_pairs(
                {n: identities[n] for n in val}, self.num_folds, self.pairs_per_fold, self.split_seed + 1
            ),
            "test": test_set,
        }
        samples = [(p, label) for label, name in enumerate(train) for p in identities[name]]
        eval_side = self.min_side_for(self.eval_transforms)
        self.train_set = IdentityDataset(
            samples, self.train_transforms, self.mean, self.std, self.min_side_for(self.train_transforms)
        )
        for split, pair_set in self.pair_sets.items():
            self.eval_sets[split] = EvalImageDataset(
                pair_set.images, self.eval_transforms, self.mean, self.std, self.image_size, eval_side
            )
        single = sum(len(v) < 2 for v in identities.values())
        self.stats = {
            "train": len(train),
            "val": len(val),
            "test": len(self.pair_sets["test"].identities),
            "single_image": single,
            "single_image_train": sum(len(identities[n]) < 2 for n in train),
        }
        log.info(
            "identities: %d train, %d val, %d test (%s); %d train images; val %d pairs, test %d pairs",
            len(train),
            len(val),
            self.stats["test"],
            self.pair_sets["test"].source,
            len(samples),
            len(self.pair_sets["val"]),
            len(self.pair_sets["test"]),
        )
        if single:
            log.info(
                "%d identities have a single image: they serve only as negatives (different-identity "
                "pairs) and never in training batches, which need positives",
                single,
            )

    @property
    def info(self) -> dict:
        """What a checkpoint must remember about the data (ArcFace needs the identity count)."""
        if self.train_set is None:
            self.setup()
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "num_train_identities": self.stats["train"],
            "identities": dict(self.stats),
        }

    def describe(self) -> dict:
        """What ``setup`` found, for ``mode=check``: every identity folder, the split sizes, the training
        samples and each evaluation split's images and pair count."""
        return {
            "root": str(self.root),
            "identities": scan_identities(self.root),
            "stats": dict(self.stats),
            "train": list(self.train_set.samples),
            "eval": {split: (list(ds.images), len(self.pair_sets[split])) for split, ds in self.eval_sets.items()},
        }

    def pair_set(self, split: str) -> PairSet:
        """The verification pairs of ``"val"`` or ``"test"`` (indices into that split's images)."""
        if split not in self.pair_sets:
            self.setup()
        return self.pair_sets[split]

    def _ranks(self) -> tuple[int, int]:
        """``(world size, rank)`` of the attached trainer (``(1, 0)`` outside DDP)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    # The embedding task runs with use_distributed_sampler=false (Lightning cannot inject a
    # DistributedSampler into a P x K batch sampler), so the loaders split the work by rank.
    def train_dataloader(self) -> DataLoader:
        if self.num_workers > 0:
            limit_worker_threads()
        world, rank = self._ranks()
        sampler = PKBatchSampler(
            self.train_set.labels,
            self.p,
            self.k,
            self.batches_per_epoch,
            self.split_seed,
            num_replicas=world,
            rank=rank,
        )
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=seed_worker,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        if self.num_workers > 0:
            limit_worker_threads()
        world, rank = self._ranks()
        # each rank embeds its share; the task gathers the embeddings before the protocol runs
        sampler = (
            DistributedSampler(self.eval_sets[split], num_replicas=world, rank=rank, shuffle=False)
            if world > 1
            else None
        )
        return DataLoader(
            self.eval_sets[split],
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=seed_worker,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def splits(self) -> list:
        return [ds for ds in [self.train_set, *self.eval_sets.values()] if ds is not None]
