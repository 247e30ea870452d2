"""The validation data and throughput an ``export.quantize=int8`` export is measured on.

The metric itself is the task's (``TaskExport.evaluate``: top-1 with torchmetrics as the task logs
it, COCO mAP@0.5 through the shipped numpy NMS, verification accuracy on the validation pairs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

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
