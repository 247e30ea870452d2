"""mode=export: a checkpoint to ONNX or TorchScript, verified before it is kept.

    python -m mbtasks mode=export ckpt_path=.../best.ckpt export.format=onnx

Writes ``<task>.onnx`` (or ``.pt``) and ``<task>.json`` (preprocessing, outputs, class names,
thresholds, verification) into the run dir, or to ``export.output``. By default the file is end
to end (uint8 pixels in, final answers out: :mod:`mbtasks.export.onnx_pipeline` with the task's tail).
It is written under a temporary name and checked (:mod:`mbtasks.modes.export_verify`): the network
graph against PyTorch on real images (the checkpoint's data, or ``export.inputs``) at two batch sizes,
then the end-to-end file against ``mode=predict``'s answers on those images at their own sizes; it is
renamed to its final name only when everything is within tolerance, so an interrupted or failed export
leaves nothing under the final name; the temporaries of an export killed outright are removed by the
next export to the same name. ``export.output`` is refused before any work when it is a folder, names a
run's record or an existing file that is not an earlier export
(:func:`~mbtasks.modes.export_metadata.check_output`). With ``export.quantize=int8`` the network is
quantized, calibrated and verified on the task metric instead (:mod:`mbtasks.modes.export_int8`).
The settings are :class:`~mbtasks.export.settings.ExportSettings` (the ``export:`` block, the task's own
keys in ``options``); :func:`export_task` is the entry point for a task loaded in Python.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mbtasks.atomic_files import atomic_path, remove_stale_siblings, temporary_sibling
from mbtasks.config import compose
from mbtasks.export.formats import load_e2e_runner, load_runner, save_onnx, set_metadata, write, write_end_to_end
from mbtasks.export.preprocessing import preprocessing_of
from mbtasks.export.settings import FORMATS, ExportSettings
from mbtasks.modes.evaldata import eval_data_config
from mbtasks.modes.export_int8 import int8_datamodule, int8_summary, quantize_int8, verify_int8
from mbtasks.modes.export_metadata import check_output, check_sidecar, end_to_end_details, metadata
from mbtasks.modes.export_verify import (
    compare,
    e2e_pictures,
    find_images,
    smoke_end_to_end,
    verification_inputs,
    verify_end_to_end,
)
from mbtasks.settings import build
from mbtasks.tasks import load_task, spec_for_config, spec_of

__all__ = ["check_output", "check_sidecar", "export_settings", "export_task", "run"]

log = logging.getLogger(__name__)


def _settings(block, spec) -> ExportSettings:
    return build(block, ExportSettings, options=spec.export_options)


def export_settings(task: str, overrides: Sequence[str] = (), **values) -> ExportSettings:
    """The export settings of ``task`` (a task name) as ``python -m mbtasks task=<task> <overrides>``
    composes them (``conf/config.yaml``'s ``export:`` block and ``conf/task/export/<task>.yaml``), with
    ``values`` on top, keyed as after ``export.`` (``export_settings("detection", max_detections=20)``)."""
    cfg = compose([f"task={task}", *overrides])
    block = {**OmegaConf.to_container(cfg.export, resolve=True), **values}
    return _settings(block, spec_for_config(cfg))


def _verify_network(fmt: str, path: Path, graph, images, settings: ExportSettings) -> dict:
    diffs = compare(load_runner(fmt, path), graph.module, images, graph.output_names, settings.atol, settings.rtol)
    return {
        "batch_sizes": [len(images), 1],
        **diffs,
        "atol": float(settings.atol),
        "rtol": float(settings.rtol),
        "runtime": "onnxruntime" if fmt == "onnx" else "torch.jit",
    }


def _summary(out: Path, meta: dict, source: str) -> str:
    v = meta["verification"]
    summary = ", ".join(f"{k} {d:.2e}" for k, d in v["max_abs_diff"].items())
    e2e = v.get("end_to_end")
    if e2e and "max_abs_diff" in e2e:
        summary += "; end to end vs mode=predict on {} images ({}): {}".format(
            e2e["images"], ", ".join(e2e["sizes"]), ", ".join(f"{k} {d:.2e}" for k, d in e2e["max_abs_diff"].items())
        )
    if "int8" in v:
        summary += "; " + int8_summary(v["int8"])
    return f"export: {out} verified with {v['runtime']} on {source}: max abs diff {summary}"


def export_task(
    task, train_cfg: DictConfig, settings: ExportSettings, out: str | Path, source_checkpoint: str | None = None
) -> dict:
    """Export a loaded task to ``out`` (+ ``out.with_suffix('.json')``), verified before it is kept.

    Args:
        task, train_cfg: what :func:`mbtasks.tasks.load_task` returns (the task is copied, not changed).
        settings: the ``export.*`` keys (:func:`export_settings`; ``settings.output`` is not read: ``out`` is).
        out: the file to write (``.onnx`` / ``.pt``); ``<out>.json`` holds the metadata.
        source_checkpoint: recorded in the metadata.

    Returns:
        ``{"path", "metadata", "inputs", "max_abs_diff", ...}`` (the verification record), plus
        ``"quantization"`` (what was quantized and what kept float) with ``export.quantize=int8``.

    Raises:
        ConfigError: a bad setting, or an ``out`` (or ``.json`` beside it) that is not an earlier export's.
        ExportError: the exported file does not reproduce PyTorch / ``mode=predict``; nothing is kept.
    """
    fmt, end_to_end, int8 = settings.format, settings.end_to_end, settings.int8
    out = Path(out)
    sidecar = check_output(out)
    for path in (out, sidecar):  # what an export killed mid-way left behind
        for stale in remove_stale_siblings(path):
            log.info("removed %s, left by an interrupted export", stale)
    datamodule = int8_datamodule(train_cfg) if int8 else None
    task = copy.deepcopy(task).cpu().float().eval()
    spec = spec_of(task).export
    graph = spec.graph(task)
    size = int(task.info.get("image_size", 224))
    pre = preprocessing_of(train_cfg, size, task.info["mean"], task.info["std"]) if end_to_end else None
    post = spec.post_settings(task, graph, settings.options)
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs = None if settings.inputs is None else str(settings.inputs)
    n = max(2, settings.num_inputs)
    files, source = find_images(inputs, train_cfg, n)
    images, source = verification_inputs(files, source, inputs, train_cfg, task, n)
    meta = metadata(task, train_cfg, graph, fmt, source_checkpoint)
    # Written and checked under temporary names in the same folder; renamed only once verified.
    tmp, tmp_net, tmp_q = (temporary_sibling(out, tag) for tag in ("export", "network", "int8"))
    network = tmp_net if end_to_end or int8 else tmp
    try:
        write(fmt, graph.module, images[:2], network, graph.output_names, meta, settings.opset)
        meta["verification"] = {"inputs": source, **_verify_network(fmt, network, graph, images, settings)}
        if int8:
            meta["quantization"] = quantize_int8(task, train_cfg, datamodule, tmp_net, tmp_q, settings)
            meta["verification"]["int8"] = verify_int8(task, datamodule, tmp_net, tmp_q, images.numpy(), settings)
            os.replace(tmp_q, tmp_net)
            if not end_to_end:
                import onnx

                save_onnx(onnx.load(str(tmp_net)), tmp, meta)
        if end_to_end:
            meta.update(end_to_end_details(task, pre, post))
            write_end_to_end(fmt, tmp_net, tmp, pre, spec, post, meta)
            pictures = e2e_pictures(files, pre.size)
            sizes = sorted({f"{p.shape[1]}x{p.shape[0]}" for p in pictures})
            runner = load_e2e_runner(fmt, tmp)
            if int8:  # answers checked through the int8 metric; here: it runs, with sane outputs
                meta["verification"]["end_to_end"] = {
                    "vs": "runs on real images (answers checked through the int8 metric, not against mode=predict)",
                    **smoke_end_to_end(runner, task, pictures),
                }
            else:
                meta["verification"]["end_to_end"] = {
                    "vs": "mode=predict",
                    "images": len(pictures),
                    "sizes": sizes,
                    "e2e_atol": float(settings.e2e_atol),
                    **spec.tolerances(settings.options),
                    **verify_end_to_end(runner, task, train_cfg, pictures, settings),
                }
            set_metadata(fmt, tmp, meta)
        with atomic_path(sidecar) as tmp_json:  # renamed after the model: a failed rename leaves no orphan
            tmp_json.write_text(json.dumps(meta, indent=2, sort_keys=True))
            os.replace(tmp, out)
    finally:
        for path in (tmp, tmp_net, tmp_q):
            path.unlink(missing_ok=True)
    print(_summary(out, meta, source))
    log.info("wrote %s and %s", out, sidecar)
    return {
        "path": str(out),
        "metadata": str(sidecar),
        **meta["verification"],
        **({"quantization": meta["quantization"]} if "quantization" in meta else {}),
    }


def settings_for_checkpoint(cfg: DictConfig, settings: ExportSettings, name: str, overrides=()) -> ExportSettings:
    """The settings for a checkpoint of task ``name`` when the run's config composed another task's (no
    ``task=`` given): the root keys as composed, the checkpoint task's own keys from its defaults, and
    those of them given on the command line."""
    given = {o.split("=", 1)[0].lstrip("+~").removeprefix("export.") for o in overrides if "=" in o}
    searchpath = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == "hydra.searchpath"]
    theirs = compose([f"task={name}", *searchpath])
    own = OmegaConf.to_container(theirs.export, resolve=True)
    composed = OmegaConf.to_container(cfg.export, resolve=True)
    root = {"_target_", *type(settings).__dataclass_fields__}
    block = {**own, **{k: v for k, v in composed.items() if k in root or (k in given and k in own)}}
    return _settings(block, spec_for_config(theirs))


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    # every key checked, and export.output refused, before the checkpoint is even loaded
    settings = _settings(cfg.export, spec_for_config(cfg))
    if settings.output:
        check_output(Path(str(settings.output)))
    task, train_cfg = load_task(cfg.ckpt_path)
    if task.name != spec_for_config(cfg).name:  # task= left out: the checkpoint's own keys and defaults
        settings = settings_for_checkpoint(cfg, settings, task.name, overrides)
    # data.* keys given on the command line apply on top of the checkpoint's (as for mode=test): where
    # the inputs, the calibration images and the INT8 validation split come from
    train_cfg.data = eval_data_config(cfg, train_cfg, overrides)
    if settings.output:
        out = Path(str(settings.output))
    else:
        out = run_dir / f"{task.name}{FORMATS[settings.format]}"
    return export_task(task, train_cfg, settings, out, source_checkpoint=str(cfg.ckpt_path))
