"""LitData shards for classification: an ImageFolder written once as ``litdata.optimize`` chunks, then
streamed by ``StreamingDataset`` / ``StreamingDataLoader`` from local disk or object storage.

Layout written by :func:`write_shards` (``python -m mbtasks shards write SRC DST``)::

    DST/classes.json                 class names in label order, samples and skipped files per split
    DST/{train,val,test}/index.json  LitData's index
    DST/{train,val,test}/chunk-*.bin the samples: {"image": the file's encoded bytes, "label", "index", "name"}

The image files' own JPEG / PNG bytes are stored, not decoded arrays: shards stay the size of the
folder, and training decodes them with the same reader (:mod:`mbtasks.data.image_files`) and transforms as
``data=imagefolder``. Every image is decoded once while writing; unreadable ones are left out and
counted in ``classes.json``.

Reading (:class:`ShardsDataModule`, ``data=shards data.root=DST`` or ``s3://bucket/DST``): LitData
splits the chunks across DDP ranks and loader workers, so each sample is read once per epoch. Training
drops the last few samples that do not fill a batch on every rank (``drop_last``: every rank runs the
same number of steps); validation and test read every sample once.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mbtasks.atomic_files import write_json_atomic
from mbtasks.data.base import DataModuleBase, limit_worker_threads, seed_worker
from mbtasks.data.image_files import ImageReadError, read_rgb, read_rgb_sized
from mbtasks.data.imagefolder import scan_image_folder
from mbtasks.data.transforms import IMAGENET_MEAN, IMAGENET_STD, apply, to_tensor
from mbtasks.errors import ConfigError, DataError, UserError

log = logging.getLogger(__name__)

META = "classes.json"
FORMAT = "mbtasks-shards"
SPLITS = ("train", "val", "test")
# fork: workers share the loaded modules (no re-import of torch each) and a script calling write_shards
# needs no `if __name__ == "__main__"` guard (LitData's default, spawn, re-runs the script without one)
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
INSTALL_HINT = "pip install 'mbtasks[stream]' (or pip install litdata)"


def litdata():
    """The ``litdata`` module (an optional dependency), with its PyPI version check off.

    LitData asks PyPI for a newer version on every dataset it creates (30 s timeout): a training run
    must not wait on the network, nor call out from an offline cluster.
    """
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    try:
        import litdata as ld
    except ImportError as err:
        raise ConfigError(f"data=shards needs the litdata package: {INSTALL_HINT}") from err
    return ld


def is_url(root: str) -> bool:
    return "://" in str(root)


def _encode(item: tuple[str, int, int, str]) -> dict[str, Any] | None:
    """One sample for ``litdata.optimize``: the file's bytes, or None (left out) when it cannot be decoded."""
    path, label, index, name = item
    try:
        read_rgb(path)  # what training could not decode is not written
    except ImageReadError as err:
        log.warning("skipping unreadable image %s (%s)", path, err.__cause__ or err)
        return None
    return {"image": Path(path).read_bytes(), "label": int(label), "index": int(index), "name": name}


def _written(split_dir: Path) -> int:
    index = json.loads((split_dir / "index.json").read_text())
    return sum(int(c["chunk_size"]) for c in index["chunks"])


def write_shards(
    root: str | Path,
    output: str | Path,
    splits: Sequence[str] = SPLITS,
    class_names: list[str] | None = None,
    chunk_bytes: str | int = "64MB",
    workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the ImageFolder ``root/<split>/<class>/<image>`` as LitData shards under ``output`` (local disk).

    Args:
        root: the ImageFolder (``data=imagefolder``'s ``data.root``).
        output: folder to write; ``<output>/<split>/`` per split and ``<output>/classes.json``.
            For object storage, write locally and copy the folder (``aws s3 sync output s3://...``).
        splits: folder names of the train, val and test splits; a missing test split is skipped
            (reading then tests on val, as ``data=imagefolder`` does).
        class_names: the classes in label order (None: the train split's sub-folders, sorted).
        chunk_bytes: the size of one chunk file (LitData's ``chunk_bytes``: ``"64MB"``, or bytes).
        workers: processes that decode and write (None: up to 4, one per core).
        overwrite: replace shards already in ``output`` (otherwise refused, nothing is lost).

    Returns:
        What ``classes.json`` holds: ``{"format", "class_names", "splits": {split: {"samples", "skipped"}}}``.

    Raises:
        DataError: ``root``'s layout is not usable, or ``output`` already holds shards.
    """
    ld = litdata()
    root, output = Path(root), Path(output)
    if is_url(str(output)):
        raise ConfigError(f"{output}: shards are written to local disk; copy the folder to object storage after")
    names = dict(zip(SPLITS, splits, strict=True))
    if class_names is None:
        _, class_names = scan_image_folder(root / names["train"])
    present = [s for s in SPLITS if (root / names[s]).is_dir()]
    if "val" not in present:
        raise DataError(f"{root / names['val']}: folder not found (expected <root>/<split>/<class>/<image>)")
    existing = [str(output / s) for s in present if (output / s / "index.json").exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]}: shards are already there; pass --overwrite (overwrite=True) to replace them")
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "source": str(root),
        "class_names": list(class_names),
        "splits": {},
    }
    for split in present:
        samples, _ = scan_image_folder(root / names[split], class_names)
        inputs = [(str(p), label, i, str(p.relative_to(root))) for i, (p, label) in enumerate(samples)]
        ld.optimize(
            fn=_encode,
            inputs=inputs,
            output_dir=str(output / split),
            chunk_bytes=chunk_bytes,
            num_workers=min(workers, len(inputs)),
            mode="overwrite" if overwrite else None,
            verbose=False,
            start_method=START_METHOD,
        )
        written = _written(output / split)
        if not written:
            raise DataError(f"{root / names[split]}: no image could be written (see the warnings above)")
        meta["splits"][split] = {"samples": written, "skipped": len(inputs) - written}
        log.info(
            "%s: %d samples written to %s (%d unreadable left out)",
            split,
            written,
            output / split,
            len(inputs) - written,
        )
    write_json_atomic(output / META, meta)
    return meta


def read_meta(root: str, cache_dir: str | None = None, storage_options: dict | None = None) -> dict[str, Any]:
    """``classes.json`` of the shards at ``root`` (a local folder or an object-store URL)."""
    if not is_url(root):
        path = Path(root) / META
        if not path.is_file():
            raise DataError(
                f"{path}: not found; {root} is not a shards folder (write one with "
                "python -m mbtasks shards write IMAGEFOLDER DST)"
            )
        text = path.read_text()
    else:
        litdata()
        from litdata.streaming.downloader import get_downloader

        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            local = Path(tmp) / META
            try:
                get_downloader(root, tmp, [], storage_options or {}).download_file(
                    f"{root.rstrip('/')}/{META}", str(local)
                )
                text = local.read_text()
            except Exception as err:  # noqa: BLE001 - any storage client's failure: say which file
                raise DataError(
                    f"{root}/{META}: cannot read it ({type(err).__name__}: {err}); give the classes "
                    "as data.class_names to skip it"
                ) from err
    meta = json.loads(text)
    if meta.get("format") != FORMAT or not meta.get("class_names"):
        raise DataError(f"{root}/{META}: not written by mbtasks shards write (no format {FORMAT!r} / class_names)")
    return meta


class DecodeSample:
    """LitData ``transform``: a shard sample -> ``(image tensor (3, H, W), label)``, as ImageFolderDataset returns.

    Picklable (it travels to loader workers); ``set_random_seed`` re-seeds the albumentations pipeline
    per worker (:func:`~mbtasks.data.base.seed_worker` finds it on the dataset).
    """

    def __init__(self, pipeline: Callable | None, mean, std, decode_side: int = 0) -> None:
        self.pipeline = pipeline
        self.mean, self.std = tuple(mean), tuple(std)
        self.decode_side = int(decode_side)

    def set_random_seed(self, seed: int) -> None:
        if callable(getattr(self.pipeline, "set_random_seed", None)):
            self.pipeline.set_random_seed(seed)

    def __call__(self, sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
        try:
            image, _ = read_rgb_sized(io.BytesIO(sample["image"]), self.decode_side)
        except ImageReadError as err:  # decoded when written: a damaged chunk or a foreign writer
            raise DataError(f"shard sample {sample.get('name', sample.get('index'))}: {err.__cause__ or err}") from err
        image = apply(self.pipeline, image)["image"]
        return to_tensor(image, self.mean, self.std), int(sample["label"])


class ShardsDataModule(DataModuleBase):
    """Train/val/test from LitData shards written by :func:`write_shards`; the keys of ``data=imagefolder``.

    Args:
        root: the shards folder, or an object-store URL (``s3://bucket/path``; gs://, azure:// as LitData reads).
        image_size / batch_size / num_workers / train_transforms / eval_transforms / mean / std: as
            :class:`~mbtasks.data.imagefolder.ImageFolderDataModule`.
        class_names: the classes in label order (null: ``classes.json``'s); given, they must match it.
        cache_dir: where LitData keeps downloaded chunks of a remote ``root`` (null: LitData's default).
        max_cache_size: the cache's budget (``"50GB"``; null: LitData's default).
        shuffle: shuffle the training samples (chunks, then samples within them), reshuffled every epoch.
        seed: LitData's shuffle seed (the run's ``seed``).
        storage_options: passed to LitData's storage client (credentials, endpoint_url ...).
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
        class_names: list[str] | None = None,
        cache_dir: str | None = None,
        max_cache_size: str | None = None,
        shuffle: bool = True,
        seed: int = 42,
        storage_options: dict | None = None,
    ) -> None:
        super().__init__(root, image_size, num_workers, train_transforms, eval_transforms, mean, std)
        self.url = str(root).rstrip("/")  # Path() would fold s3:// into s3:/
        self.batch_size = int(batch_size)
        self.class_names: list[str] | None = list(class_names) if class_names is not None else None
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.storage_options = dict(storage_options or {})
        self.sizes: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.sizes:
            return
        litdata()  # a missing package fails before any work
        meta = read_meta(self.url, self.cache_dir, self.storage_options)
        if self.class_names is not None and self.class_names != list(meta["class_names"]):
            raise DataError(
                f"data.class_names={self.class_names} differ from {self.url}/{META}'s {meta['class_names']}"
            )
        self.class_names = list(meta["class_names"])
        splits = meta.get("splits", {})
        missing = [s for s in ("train", "val") if s not in splits]
        if missing:
            raise DataError(f"{self.url}: no {missing[0]} shards ({META} lists {sorted(splits)})")
        self.test_split = "test" if "test" in splits else "val"
        self.sizes = {s: int(v["samples"]) for s, v in splits.items()}

    def splits(self) -> list:
        return []  # unreadable images were left out when the shards were written (classes.json counts them)

    def describe(self) -> dict:
        raise DataError(
            f"{self.url}: mode=check reads image folders; shards were checked when written "
            f"(every image decoded, unreadable ones counted in {META}): run mode=check on the ImageFolder"
        )

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

    def dataset(self, split: str, train: bool):
        """The ``StreamingDataset`` of one split. Built when a loader is asked for: LitData reads the DDP
        rank and world size when the dataset is created, and Lightning has started the process group by then."""
        ld = litdata()
        pipeline = self.train_transforms if train else self.eval_transforms
        return ld.StreamingDataset(
            f"{self.url}/{split}",
            cache_dir=self.cache_dir,
            max_cache_size=self.max_cache_size,
            shuffle=train and self.shuffle,
            drop_last=train,
            seed=self.seed,
            storage_options=self.storage_options,
            transform=DecodeSample(pipeline, self.mean, self.std, self.min_side_for(pipeline)),
        )

    def _loader(self, split: str, train: bool):
        ld = litdata()
        if self.num_workers > 0:
            limit_worker_threads()
        return ld.StreamingDataLoader(
            self.dataset(split, train),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker,
        )

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader(self.test_split, False)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mbtasks shards write SRC DST``: an ImageFolder as LitData shards."""
    parser = argparse.ArgumentParser(
        prog="python -m mbtasks shards", description="ImageFolder -> LitData shards for data=shards"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write SRC/{train,val,test}/<class>/<image> as shards under DST")
    write.add_argument("src")
    write.add_argument("dst")
    write.add_argument("--chunk-bytes", default="64MB", help="size of one chunk file (default 64MB)")
    write.add_argument("--workers", type=int, default=None, help="writer processes (default: up to 4)")
    write.add_argument("--overwrite", action="store_true", help="replace shards already in DST")
    args = parser.parse_args(argv)
    try:
        meta = write_shards(
            args.src, args.dst, chunk_bytes=args.chunk_bytes, workers=args.workers, overwrite=args.overwrite
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split, counts in meta["splits"].items():
        print(f"{split}: {counts['samples']} samples ({counts['skipped']} unreadable left out)")
    print(f"{len(meta['class_names'])} classes; train with: python -m mbtasks data=shards data.root={args.dst}")
    return 0
