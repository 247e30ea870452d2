"""What an export writes besides the model: its metadata (``<name>.json``, also stored inside the file),
and the checks that keep ``export.output`` from overwriting anything that is not an earlier export."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mbtasks.atomic_files import run_record
from mbtasks.backbones.pretrained import describe_config
from mbtasks.errors import ConfigError
from mbtasks.export.formats import INPUT_NAME, PIXELS, is_export
from mbtasks.tasks import spec_of


def metadata(task, train_cfg: DictConfig, graph, fmt: str, source_checkpoint) -> dict:
    info = task.info
    size = int(info.get("image_size", 224))
    try:
        transforms = OmegaConf.to_container(train_cfg.data.eval_transforms, resolve=True)
    except Exception:  # noqa: BLE001 - informative only; an unresolvable node is left out
        transforms = None
    try:
        mbtasks_version = version("mbtasks")
    except PackageNotFoundError:
        mbtasks_version = None
    return {
        "task": task.name,
        "format": fmt,
        "end_to_end": False,
        "image_size": size,
        "mean": list(info["mean"]),
        "std": list(info["std"]),
        "class_names": list(info.get("class_names") or []),
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", 3, size, size],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "preprocessing": "the eval transforms (resize to image_size), then (pixels / 255 - mean) / std",
            "eval_transforms": transforms,
        },
        **graph.details,
        "output_names": list(graph.output_names),
        "backbone": describe_config(train_cfg.backbone),
        "source_checkpoint": str(source_checkpoint),
        "versions": {"mbtasks": mbtasks_version, "torch": torch.__version__},
    }


def check_output(out: Path) -> Path:
    """Refuse, before any work, an ``export.output`` that would overwrite what is not an earlier
    export: a folder, a run's record (:func:`mbtasks.atomic_files.run_record`: checkpoints, ``config.yaml``,
    ``metrics.json``, ``epochs.jsonl``, ``.hydra/``, judged by name for the file and its ``.json``),
    or any other existing file that is not an mbtasks export. Returns the metadata path."""
    if out.suffix.lower() == ".json":
        raise ConfigError(
            f"export.output={out}: the export file cannot end in .json (its metadata goes to <name>.json)"
        )
    if out.is_dir():
        raise ConfigError(
            f"export.output={out} is a folder: give the file to write, e.g. {out / 'model.onnx'} (nothing was written)"
        )
    folder = next((p for p in out.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"export.output={out}: {folder} is a file, not a folder (nothing was written)")
    for path in (out, out.with_suffix(".json")):
        what = run_record(path)
        if what:
            raise ConfigError(
                f"export.output={out}: {path} would be {what}; an export never takes the name of a "
                "run's checkpoint, config or metrics: choose another export.output (nothing was written)"
            )
    if out.exists() and not is_export(out):
        raise ConfigError(
            f"export.output={out} exists and is not an mbtasks export; an export only replaces an "
            "earlier export: remove it or choose another export.output (nothing was written)"
        )
    return check_sidecar(out)


def check_sidecar(out: Path) -> Path:
    """The metadata path beside ``out``; refuses to overwrite a file that is not an earlier export's."""
    if out.suffix.lower() == ".json":
        raise ConfigError(
            f"export.output={out}: the export file cannot end in .json (its metadata goes to <name>.json)"
        )
    sidecar = out.with_suffix(".json")
    if sidecar.exists():
        try:
            old = json.loads(sidecar.read_text())
            ours = isinstance(old, dict) and {"task", "format", "source_checkpoint"} <= set(old)
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise ConfigError(
                f"export.output={out}: {sidecar} exists and is not an mbtasks export's metadata; "
                "choose another export.output (nothing was written)"
            )
    return sidecar


def end_to_end_details(task, pre, post: dict) -> dict:
    """Metadata of an end-to-end export: its input, and the task's outputs and settings."""
    details = spec_of(task).export.e2e_details(post)
    return {
        "end_to_end": True,
        **details,
        "output_names": list(details["outputs"]),
        "input": {
            "name": PIXELS,
            "shape": ["N", "H", "W", 3],
            "dtype": "uint8",
            "layout": "NHWC, RGB",
            "preprocessing": pre.describe() + " (inside the graph)",
        },
    }
