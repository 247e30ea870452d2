"""``export.quantize=int8``: the network graph quantized (:mod:`mbtasks.export.quantize`), calibrated on the
checkpoint's training split (or ``export.calibration``), and verified on the task metric of its validation
split against the fp32 graph, within the task's ``export.int8_max_drop_*``; fp32 and int8 throughput are
recorded (:mod:`mbtasks.modes.export_metrics`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mbtasks.errors import ConfigError, ExportError
from mbtasks.export.formats import INPUT_NAME, load_runner
from mbtasks.export.quantize import DEPTHWISE, OUTPUT_LAYERS, quantize_network
from mbtasks.export.settings import ExportSettings, int8_max_drop
from mbtasks.inference.inputs import file_batches
from mbtasks.modes.export_metrics import (
    class_count,
    folder_images,
    split_images,
    spread,
    throughput,
    val_batches,
    val_datamodule,
)
from mbtasks.tasks import spec_of

log = logging.getLogger(__name__)


def int8_datamodule(train_cfg: DictConfig):
    """The checkpoint's data module: its training split calibrates, its validation split scores."""
    try:
        return val_datamodule(train_cfg)
    except Exception as err:  # noqa: BLE001 - any failure to rebuild the data is the user's to fix
        raise ConfigError(
            f"export.quantize=int8 calibrates on the checkpoint's training split and measures the "
            f"metric on its validation split (data.root={OmegaConf.select(train_cfg, 'data.root')}), "
            f"which could not be loaded: {err}"
        ) from err


def calibration_candidates(spec: str | None, datamodule) -> tuple[list[tuple[Path, tuple]], dict]:
    """``(image, classes)`` to calibrate on, and where they come from: ``export.calibration`` (every
    image under it, a sub-folder counted as a class) or the checkpoint's training split; never an
    image of the validation split, which the INT8 metric scores."""
    if spec:
        root = Path(spec)
        if not root.exists():
            raise ConfigError(f"export.calibration={spec}: no such file or folder")
        items = [(root, ())] if root.is_file() else folder_images(root)
        where = {"source": "export.calibration", "root": str(root)}
    else:
        items = split_images(datamodule, "train")
        where = {"source": "training split", "root": str(getattr(datamodule, "root", "?"))}
        if not items:
            raise ConfigError(
                f"export.quantize=int8 calibrates on the training split of data.root={where['root']}, "
                "which has none: give export.calibration=FOLDER (images that are not in the "
                "validation split)"
            )
    scored = {os.path.abspath(p) for p, _ in split_images(datamodule, "val")}
    kept = [(p, labels) for p, labels in items if os.path.abspath(p) not in scored]
    where["validation_images_left_out"] = len(items) - len(kept)
    return kept, where


def kept_float(task, settings: ExportSettings) -> tuple[list[str], str]:
    """The op types (or keywords) kept in float besides the float tail, and where the choice comes from:
    ``export.int8_exclude``, or (null) the task's measured ``int8_keep_float``."""
    if settings.int8_exclude is not None:
        return list(settings.int8_exclude), "export.int8_exclude"
    return list(spec_of(task).export.int8_keep_float), f"export.int8_exclude=null: task {task.name}'s default"


def float_rule(exclude: list[str], source: str, reduce_range: bool) -> str:
    """The rule the export follows, in words (printed, and recorded as ``quantization.rule``)."""
    words = {
        DEPTHWISE: "the depthwise convolutions",
        OUTPUT_LAYERS: "the output layers (the Conv/Gemm/MatMul with none after them)",
    }
    kinds = ", ".join(words.get(k, f"every {k}") for k in exclude)
    extra = f", plus {kinds} ({source})" if exclude else f", nothing else ({source})"
    weights = (
        "7-bit range (export.int8_reduce_range=true)"
        if reduce_range
        else "full 8-bit range (export.int8_reduce_range=false)"
    )
    return (
        "float: every node with no Conv/Gemm/MatMul downstream (softmax, box decoding, L2 normalisation)"
        f"{extra}; int8: every other Conv/Gemm/MatMul and the ops between them, weights per channel in the {weights}"
    )


def quantize_int8(task, train_cfg: DictConfig, datamodule, src: Path, dst: Path, settings: ExportSettings) -> dict:
    """Quantize the network graph ``src`` to ``dst``, calibrated on up to ``export.calibration_images``
    readable images of the training split (or ``export.calibration``), one class after the other
    (:func:`spread`). Unreadable files are replaced by the next candidates, counted, logged and recorded."""
    spec = None if settings.calibration is None else str(settings.calibration)
    limit = settings.calibration_images
    exclude, source = kept_float(task, settings)
    rule = float_rule(exclude, source, settings.int8_reduce_range)
    items, where = calibration_candidates(spec, datamodule)
    key = f"export.calibration={spec}" if spec else f"the training split of data.root={where['root']}"
    order = spread(items)
    batches: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    used = taken = 0
    while used < limit and taken < len(order):
        chunk = order[taken : taken + limit - used]
        taken += len(chunk)
        for b in file_batches(chunk, train_cfg, task.info, 32, skipped):
            batches.append(b.numpy())
            used += len(b)
    if skipped:
        log.warning(
            "export.quantize=int8: %d unreadable calibration image(s) under %s skipped (first: %s: %s)",
            len(skipped),
            key,
            *next(iter(skipped.items())),
        )
    if not batches:
        left = (
            f", {where['validation_images_left_out']} left out as validation images"
            if where["validation_images_left_out"]
            else ""
        )
        raise ConfigError(
            f"export.quantize=int8: no readable images under {key} to calibrate on ({len(items)} "
            f"candidates, {len(skipped)} unreadable{left}); give export.calibration=FOLDER"
        )
    chosen = [p for p in order[:taken] if str(p) not in skipped]
    covered, classes = class_count(items, chosen)
    calibration = {
        **where,
        "candidates": len(items),
        "images": used,
        "classes": classes,
        "classes_sampled": covered,
        "unreadable": len(skipped),
        "unreadable_files": dict(list(skipped.items())[:10]),
    }
    log.info("export.quantize=int8: calibrating on %d images of %s (%d of %d classes)", used, key, covered, classes)
    log.info("export.quantize=int8: %s", rule)
    record = quantize_network(
        src, dst, batches, INPUT_NAME, exclude, {"reduce_range": bool(settings.int8_reduce_range)}
    )
    return {
        "type": "int8",
        "rule": rule,
        **record,
        "calibration_source": where["root"],
        "calibration": calibration,
    }


def verify_int8(
    task, datamodule, fp32_path: Path, int8_path: Path, images: np.ndarray, settings: ExportSettings
) -> dict:
    """The task metric of the fp32 and int8 network graphs on the checkpoint's validation split, and
    their throughput (``export.speed_batch`` images, ``export.speed_threads`` onnxruntime threads); raises
    :class:`ExportError` when the int8 metric drops more than the task's ``export.int8_max_drop_*``."""
    spec = spec_of(task).export
    name = spec.metric
    key, tolerance = int8_max_drop(settings.options, task.name)
    batch, threads = settings.speed_batch, settings.speed_threads
    fp32, int8 = (load_runner("onnx", p, threads) for p in (fp32_path, int8_path))
    metric = {
        k: spec.evaluate(task, datamodule, runner, val_batches(datamodule))
        for k, runner in (("fp32", fp32), ("int8", int8))
    }
    speed = throughput({"fp32": fp32, "int8": int8}, images, batch)
    record = {
        "metric": name,
        "split": "val",
        **metric,
        "drop": metric["fp32"] - metric["int8"],
        "max_drop": tolerance,
        "speed": {
            "batch": batch,
            "threads": threads,
            "unit": "images/s",
            **speed,
            "int8_vs_fp32": speed["int8"] / speed["fp32"],
        },
    }
    if not record["drop"] <= tolerance:
        raise ExportError(
            f"export.quantize=int8 refused: the {name} drop {record['drop']:.4g} exceeds "
            f"export.{key}={tolerance:g} ({int8_summary(record)}); nothing was written: keep layers "
            "in float with export.int8_exclude, or calibrate on more images (export.calibration_images)"
        )
    return record


def int8_summary(r: dict) -> str:
    s = r["speed"]
    return (
        f"val {r['metric']} fp32 {r['fp32']:.4g} -> int8 {r['int8']:.4g} (drop {r['drop']:.4g}); "
        f"{s['fp32']:.0f} -> {s['int8']:.0f} images/s ({s['int8_vs_fp32']:.2f}x, batch {s['batch']}, "
        f"{s['threads']} threads)"
    )
