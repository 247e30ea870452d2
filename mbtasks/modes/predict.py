"""mode=predict: images in, per-task results (JSON, drawn images, embeddings) out."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig

from mbtasks.data.io import is_image_file
from mbtasks.errors import ConfigError
from mbtasks.fusion import fold_batchnorm
from mbtasks.tasks import load_task

log = logging.getLogger(__name__)

# task name -> module in mbtasks.predictors with a ``predict(task, train_cfg, cfg, files, run_dir)``
PREDICTORS = {
    "classification": "mbtasks.predictors.classification",
    "detection": "mbtasks.predictors.detection",
    "embedding": "mbtasks.predictors.embedding",
}


def collect_inputs(spec: str) -> list[Path]:
    """An image file, or every image below a folder (recursively, sorted)."""
    path = Path(spec)
    if path.is_file():
        if not is_image_file(path):
            raise ConfigError(f"predict.input={spec}: not an image file (by extension)")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise ConfigError(f"predict.input={spec}: the folder holds no image files")
        return files
    raise ConfigError(f"predict.input={spec}: no such file or folder")


def to_float(output):
    """Floating tensors of a (nested) model output back in float32."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(to_float(o) for o in output))
    if isinstance(output, list | tuple):
        return type(output)(to_float(o) for o in output)
    if isinstance(output, dict):
        return {k: to_float(v) for k, v in output.items()}
    return output


@contextlib.contextmanager
def fast_inference(task, channels_last: bool = False, precision="32", fold_bn: bool = False) -> Iterator[None]:
    """``predict.fold_bn``, ``predict.channels_last`` (NHWC) and ``predict.precision=bf16`` around prediction.

    ``fold_bn`` folds every BatchNorm into its convolution (the task must be in eval mode, as
    :func:`~mbtasks.tasks.load_task` returns it). With bf16 the network runs under autocast and
    its outputs are cast back to float32 by a forward hook, so scores and post-processing (box
    decoding, NMS, embedding distances) stay in float32.
    """
    precision = str(precision)
    if precision not in ("32", "32-true", "bf16", "bf16-mixed"):
        raise ConfigError(f"predict.precision={precision!r}: expected 32 or bf16")
    if fold_bn:
        fold_batchnorm(task.model)
    if channels_last:
        task.to(memory_format=torch.channels_last)
    if not precision.startswith("bf16"):
        yield
        return
    hook = task.model.register_forward_hook(lambda module, args, output: to_float(output))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        with torch.autocast(device, dtype=torch.bfloat16):
            yield
    finally:
        hook.remove()


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    task, train_cfg = load_task(cfg.ckpt_path)
    files = collect_inputs(cfg.predict.input) if cfg.predict.get("input") else []
    module = importlib.import_module(PREDICTORS[task.name])
    run_dir.mkdir(parents=True, exist_ok=True)
    with fast_inference(task, bool(cfg.predict.get("channels_last", False)), cfg.predict.get("precision", 32),
                        bool(cfg.predict.get("fold_bn", True))):
        return module.predict(task, train_cfg, cfg, files, run_dir)
