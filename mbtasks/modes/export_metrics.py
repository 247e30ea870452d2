"""The task metric and throughput of an exported network graph, for ``export.quantize=int8``.

The metric is computed on the checkpoint's validation split with the project's own metric code
(top-1: torchmetrics' ``MulticlassAccuracy`` as the task logs ``val/acc_top1``; detection:
:class:`~mbtasks.metrics.coco.CocoMeanAP` ``map_50`` on the shipped NMS
:func:`~mbtasks.export.postprocess.detections_from_outputs`; embedding: the verification protocol
:func:`~mbtasks.metrics.verification.evaluate_verification` on the validation pairs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mbtasks.errors import ConfigError
from mbtasks.export.postprocess import detections_from_outputs
from mbtasks.metrics.coco import CocoMeanAP
from mbtasks.metrics.verification import evaluate_verification, pair_distances
from mbtasks.tasks.detection import to_original

Runner = Callable[[np.ndarray], list[np.ndarray]]
# metric name per task, and the export.* key holding its tolerated drop
METRICS = {"classification": ("top1", "int8_max_drop_top1"), "detection": ("map_50", "int8_max_drop_map50"),
           "embedding": ("verification_accuracy", "int8_max_drop_verification")}


def val_datamodule(train_cfg: DictConfig):
    """The checkpoint's data module set up for validation (in-process loading: no worker start-up)."""
    data = OmegaConf.create(OmegaConf.to_container(train_cfg.data, resolve=True))
    data.num_workers = 0
    datamodule = instantiate(data)
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def val_batches(datamodule, max_images: int) -> Iterator:
    seen = 0
    for batch in datamodule.val_dataloader():
        if seen >= max_images:
            return
        seen += len(batch[0])
        yield batch


def evaluate(task, datamodule, runner: Runner, max_images: int = 10**9) -> float:
    """The task metric of ``runner`` (a network graph) on the validation split: top-1 accuracy in %,
    mAP@0.5 or verification accuracy (both in [0, 1])."""
    if task.name == "classification":
        metric = task.val_metrics["acc_top1"].clone()
        metric.reset()
        for images, labels in val_batches(datamodule, max_images):
            metric.update(torch.from_numpy(runner(images.numpy())[0]), labels)
        return 100.0 * float(metric.compute())
    if task.name == "detection":
        det = task.model
        metric = CocoMeanAP()
        for images, targets in val_batches(datamodule, max_images):
            scores, boxes = runner(images.numpy())
            dets = detections_from_outputs(scores, boxes, float(det.score_threshold), float(det.nms_iou),
                                           int(det.max_detections), int(det.topk_candidates))
            dets = [{k: torch.from_numpy(v) for k, v in d.items()} for d in dets]
            metric.update(to_original(dets, tuple(images.shape[-2:]), [t["orig_size"] for t in targets]), targets)
        return float(metric.compute()["map_50"])
    pair_set = datamodule.pair_set("val")
    emb: dict[int, np.ndarray] = {}
    for images, index, ok in val_batches(datamodule, max_images):
        out = runner(images.numpy())[0]
        emb.update({int(i): e for i, e, good in zip(index.tolist(), out, ok.tolist(), strict=True) if good})
    pairs = pair_set.pairs
    keep = np.array([int(a) in emb and int(b) in emb for a, b in pairs], bool)
    if keep.sum() < 2:
        raise ConfigError("export.quantize=int8: fewer than 2 validation pairs with readable images to measure "
                          "verification accuracy on")
    table = np.zeros((len(pair_set.images), len(next(iter(emb.values())))), np.float32)
    for i, e in emb.items():
        table[i] = e
    distances = pair_distances(table, pairs[keep])
    result = evaluate_verification(distances, pair_set.same[keep], pair_set.folds[keep], pair_set.num_folds,
                                   tuple(getattr(task, "fars", (1e-3,))))
    return float(result.accuracy)


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
