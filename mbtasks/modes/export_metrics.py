"""The data an ``export.quantize=int8`` export is calibrated and measured on, and its throughput.

Calibration images come from the training split (never the validation images the INT8 metric
scores), spread over the classes; the metric itself is the task's (``TaskExport.evaluate``: top-1
with torchmetrics as the task logs it, COCO mAP@0.5 through the shipped numpy NMS, verification
accuracy on the validation pairs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mbtasks.data.image_files import is_image_file

Runner = Callable[[np.ndarray], list[np.ndarray]]


def val_datamodule(train_cfg: DictConfig):
    """The checkpoint's data module set up for validation (in-process loading: no worker start-up)."""
    data = OmegaConf.create(OmegaConf.to_container(train_cfg.data, resolve=True))
    data.num_workers = 0
    datamodule = instantiate(data)
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def split_images(datamodule, split: str) -> list[tuple[Path, tuple]]:
    """``(image path, class labels)`` of one split (``"train"`` / ``"val"``), as the data module's
    ``describe()`` lists it (what ``mode=check`` reads): ImageFolder samples, detection records (the
    classes of their boxes), identity images (embedding: train has identity labels, val none)."""
    found = datamodule.describe()
    if "splits" in found:  # ImageFolder, COCO, VOC
        items = found["splits"].get(split) or []
        return [
            (Path(r.path), tuple(sorted({int(c) for c in r.labels})))
            if hasattr(r, "path")
            else (Path(r[0]), (int(r[1]),))
            for r in items
        ]
    if split == "train":  # identities
        return [(Path(p), (int(label),)) for p, label in found.get("train", [])]
    images = (found.get("eval", {}).get(split) or ([], 0))[0]
    return [(Path(p), ()) for p in images]


def folder_images(root: Path) -> list[tuple[Path, tuple]]:
    """Every image file under ``root`` (the whole tree), grouped by the folder that holds it."""
    out = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        out += [(Path(folder) / n, (os.path.relpath(folder, root),)) for n in sorted(names) if is_image_file(n)]
    return out


def spread(items: Sequence[tuple[Path, tuple]], seed: int = 0) -> list[Path]:
    """The paths of ``items`` in an order that takes one image of each class in turn (classes and
    images shuffled with ``seed``), so any prefix covers as many classes as it can. An image with
    several classes (detection) counts for each; unlabelled ones form one group."""
    rng = np.random.default_rng(seed)
    groups: dict[Hashable, list[Path]] = {}
    for path, labels in items:
        for label in labels or (None,):
            groups.setdefault(label, []).append(path)
    queues = [[g[i] for i in rng.permutation(len(g))] for g in groups.values()]
    queues = [queues[i] for i in rng.permutation(len(queues))]
    order: list[Path] = []
    seen: set[Path] = set()
    for round_ in range(max((len(q) for q in queues), default=0)):
        for q in queues:
            if round_ < len(q) and q[round_] not in seen:
                seen.add(q[round_])
                order.append(q[round_])
    return order


def class_count(items: Sequence[tuple[Path, tuple]], chosen: Sequence[Path]) -> tuple[int, int]:
    """``(classes among chosen, classes in items)``."""
    picked = set(chosen)
    labels: dict = {}
    for path, ls in items:
        for label in ls:
            labels[label] = labels.get(label, False) or path in picked
    return sum(labels.values()), len(labels)


def val_batches(datamodule, max_images: int = 10**9) -> Iterator:
    seen = 0
    for batch in datamodule.val_dataloader():
        if seen >= max_images:
            return
        seen += len(batch[0])
        yield batch


def throughput(runners: dict[str, Runner], images: np.ndarray, batch: int = 32, repeats: int = 7) -> dict[str, float]:
    """Images per second of each runner on a batch of ``batch`` images (tiled from ``images``): the
    median of ``repeats`` timed runs after one warm-up, the runners interleaved run by run so that
    a change of machine load hits them alike."""
    x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])), dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run(x)
    for _ in range(int(repeats)):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    return {name: batch / float(np.median(t)) for name, t in times.items()}
