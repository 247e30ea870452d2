"""mode=export: a checkpoint to ONNX or TorchScript, verified against PyTorch before it is kept.

    python -m mbtasks mode=export ckpt_path=.../best.ckpt export.format=onnx

Writes ``<task>.onnx`` (or ``.pt``) and ``<task>.json`` (preprocessing, outputs, class names,
thresholds, verification) into the run dir, or to ``export.output``. The file is written under a
temporary name, run on real images (the checkpoint's data, or ``export.inputs``) at two batch
sizes, compared with the PyTorch model, and renamed to its final name only when every output is
within tolerance; an interrupted or failed export leaves nothing under the final name.
"""

from __future__ import annotations

import copy
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mbtasks.backbones.pretrained import describe_config
from mbtasks.data.io import is_image_file
from mbtasks.errors import ConfigError, ExportError
from mbtasks.export.formats import FORMATS, INPUT_NAME, load_runner, write
from mbtasks.export.graphs import export_graph
from mbtasks.modes.common import write_json_atomic
from mbtasks.predictors.common import iter_batches
from mbtasks.tasks import load_task

log = logging.getLogger(__name__)


def find_images(spec: str | None, train_cfg: DictConfig, limit: int) -> tuple[list[Path], str]:
    """Up to ``limit`` image files: from ``export.inputs``, else from the checkpoint's data root."""
    if spec:
        root = Path(spec)
        if not root.exists():
            raise ConfigError(f"export.inputs={spec}: no such file or folder")
    else:
        root = Path(str(OmegaConf.select(train_cfg, "data.root", default="") or ""))
        if not str(root) or not root.exists():
            return [], "none"
    if root.is_file():
        return ([root], str(root)) if is_image_file(root) else ([], str(root))
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        files += [Path(folder) / n for n in sorted(names) if is_image_file(Path(n))]
        if len(files) >= limit:
            break
    return files[:limit], str(root)


def verification_inputs(cfg: DictConfig, train_cfg: DictConfig, task) -> tuple[torch.Tensor, str]:
    """``(N, 3, S, S)`` normalised real images (random ones, with a warning, if none are found)."""
    n = max(2, int(cfg.export.num_inputs))
    files, source = find_images(cfg.export.get("inputs"), train_cfg, n)
    skipped: dict[str, str] = {}
    batches = [b for _, _, b in iter_batches(files, train_cfg, n, skipped)] if files else []
    if batches:
        return torch.cat(batches)[:n], f"{sum(len(b) for b in batches)} images from {source}"
    if cfg.export.get("inputs"):
        raise ConfigError(f"export.inputs={cfg.export.inputs}: no readable images there")
    log.warning("no images found under the checkpoint's data.root (%s): verifying on random inputs; "
                "give export.inputs=FOLDER for real ones", source)
    size = int(task.info.get("image_size", 224))
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)), "random normal inputs"


def compare(runner, module: torch.nn.Module, images: torch.Tensor, names, atol: float, rtol: float) -> dict:
    """Max abs difference per output (batch of all images, then of one); raises on a mismatch.

    The tolerance is ``atol + rtol * max|output|`` plus twice PyTorch's own float32 error on the
    same input (measured against a float64 copy): a barely trained network with extreme BatchNorm
    statistics amplifies rounding, and an exporter cannot be asked to be closer to PyTorch's
    float32 result than that result is to the exact one.

    Returns:
        ``{"max_abs_diff": {output: float}, "pytorch_fp32_error": {output: float}}``.
    """
    exact_module = copy.deepcopy(module).double()
    diffs: dict[str, float] = {}
    own: dict[str, float] = {}
    for batch in (images, images[:1]):
        with torch.no_grad():
            expected = [t.numpy() for t in module(batch)]
            exact = [t.numpy() for t in exact_module(batch.double())]
        got = runner(batch.numpy())
        for name, ref, ref64, out in zip(names, expected, exact, got, strict=True):
            if ref.shape != out.shape:
                raise ExportError(f"export verification: output {name!r} has shape {out.shape}, PyTorch {ref.shape}"
                                  f" (batch {len(batch)})")
            if not ref.size:
                continue
            diff = float(np.abs(ref - out).max())
            noise = float(np.abs(ref - ref64).max())
            limit = atol + rtol * float(np.abs(ref).max()) + 2 * noise
            diffs[name] = max(diffs.get(name, 0.0), diff)
            own[name] = max(own.get(name, 0.0), noise)
            if not diff <= limit:
                raise ExportError(
                    f"export verification failed: output {name!r} differs from PyTorch by {diff:.3g} "
                    f"(tolerance {limit:.3g} = export.atol + export.rtol x max|output| + 2 x PyTorch's own "
                    f"float32 error {noise:.3g}) at batch {len(batch)}")
    return {"max_abs_diff": diffs, "pytorch_fp32_error": own}


def metadata(task, train_cfg: DictConfig, graph, fmt: str, cfg: DictConfig) -> dict:
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
        "image_size": size,
        "mean": list(info["mean"]),
        "std": list(info["std"]),
        "class_names": list(info.get("class_names") or []),
        "input": {"name": INPUT_NAME, "shape": ["N", 3, size, size], "dtype": "float32", "layout": "NCHW, RGB",
                  "preprocessing": "the eval transforms (resize to image_size), then (pixels / 255 - mean) / std",
                  "eval_transforms": transforms},
        **graph.details,
        "backbone": describe_config(train_cfg.backbone),
        "source_checkpoint": str(cfg.ckpt_path),
        "versions": {"mbtasks": mbtasks_version, "torch": torch.__version__},
    }


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    fmt = str(cfg.export.format)
    if fmt not in FORMATS:
        raise ConfigError(f"export.format={fmt!r}: expected one of {list(FORMATS)}")
    task, train_cfg = load_task(cfg.ckpt_path)
    task = task.cpu().float().eval()
    graph = export_graph(task)
    out = Path(cfg.export.output) if cfg.export.get("output") else run_dir / f"{task.name}{FORMATS[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    images, source = verification_inputs(cfg, train_cfg, task)
    meta = metadata(task, train_cfg, graph, fmt, cfg)
    # Written and checked under a temporary name in the same folder; renamed only once verified.
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    try:
        write(fmt, graph.module, images[:2], tmp, graph.output_names, meta, int(cfg.export.opset))
        runner = load_runner(fmt, tmp)
        diffs = compare(runner, graph.module, images, graph.output_names, float(cfg.export.atol), float(cfg.export.rtol))
        meta["verification"] = {"inputs": source, "batch_sizes": [len(images), 1], **diffs,
                                "atol": float(cfg.export.atol), "rtol": float(cfg.export.rtol),
                                "runtime": "onnxruntime" if fmt == "onnx" else "torch.jit"}
        write_json_atomic(out.with_suffix(".json"), meta)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    summary = ", ".join(f"{k} {v:.2e}" for k, v in diffs["max_abs_diff"].items())
    print(f"export: {out} verified with {meta['verification']['runtime']} on {source}: max abs diff {summary}")
    log.info("wrote %s and %s", out, out.with_suffix(".json"))
    return {"path": str(out), "metadata": str(out.with_suffix(".json")), **meta["verification"]}
