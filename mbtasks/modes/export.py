"""mode=export: a checkpoint to ONNX or TorchScript, verified before it is kept.

    python -m mbtasks mode=export ckpt_path=.../best.ckpt export.format=onnx

Writes ``<task>.onnx`` (or ``.pt``) and ``<task>.json`` (preprocessing, outputs, class names,
thresholds, verification) into the run dir, or to ``export.output``. By default the file is end
to end (uint8 pixels in, final answers out: :mod:`mbtasks.export.onnx_pipeline`). It is written
under a temporary name; the network graph is compared with the PyTorch model on real images (the
checkpoint's data, or ``export.inputs``) at two batch sizes, then the end-to-end file with
``mode=predict``'s answers on those images at their own sizes; it is renamed to its final name
only when everything is within tolerance, so an interrupted or failed export leaves nothing under
the final name; the temporaries of an export killed outright are removed by the next export to the
same name. ``export.output`` is refused before any work when it is a folder, names a run's record
(a checkpoint, ``config.yaml``, ``metrics.json``...) or an existing file that is not an earlier
export (:func:`check_output`). With ``export.quantize=int8`` the network is quantized
(:mod:`mbtasks.export.quantize`), calibrated on the training split, and verified on the task metric
of the checkpoint's validation split instead (:mod:`mbtasks.modes.export_metrics`).
:func:`export_task` is the entry point for a task loaded in Python.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mbtasks.atomic_files import atomic_path, remove_stale_siblings, run_record, temporary_sibling
from mbtasks.backbones.pretrained import describe_config
from mbtasks.data.image_files import ImageReadError, is_image_file, read_rgb
from mbtasks.errors import ConfigError, ExportError
from mbtasks.export.formats import (
    FORMATS,
    INPUT_NAME,
    PIXELS,
    is_export,
    load_e2e_runner,
    load_runner,
    save_onnx,
    set_metadata,
    write,
    write_end_to_end,
)
from mbtasks.export.preprocessing import preprocessing_of
from mbtasks.export.quantize import quantize_network
from mbtasks.inference.inputs import Preprocess, file_batches
from mbtasks.modes.evaldata import eval_data_config
from mbtasks.modes.export_metrics import (
    class_count,
    folder_images,
    split_images,
    spread,
    throughput,
    val_batches,
    val_datamodule,
)
from mbtasks.tasks import load_task, spec_of

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


def verification_inputs(
    files: list[Path], source: str, spec, train_cfg: DictConfig, task, n: int
) -> tuple[torch.Tensor, str]:
    """``(N, 3, S, S)`` normalised real images (random ones, with a warning, if none are found)."""
    skipped: dict[str, str] = {}
    batches = list(file_batches(files, train_cfg, task.info, n, skipped)) if files else []
    if batches:
        return torch.cat(batches)[:n], f"{sum(len(b) for b in batches)} images from {source}"
    if spec:
        raise ConfigError(f"export.inputs={spec}: no readable images there")
    log.warning(
        "no images found under the checkpoint's data.root (%s): verifying on random inputs; "
        "give export.inputs=FOLDER for real ones",
        source,
    )
    size = int(task.info.get("image_size", 224))
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)), "random normal inputs"


def e2e_pictures(files: list[Path], size: int) -> list[np.ndarray]:
    """``(H, W, 3)`` uint8 images for the end-to-end check: the readable ``files``, plus crops of the
    first one so that several sizes and aspect ratios are always covered (random pixels when there
    are no files)."""
    pictures = []
    for path in files:
        try:
            pictures.append(read_rgb(path))
        except ImageReadError:
            continue
    if not pictures:
        rng = np.random.default_rng(0)
        pictures = [rng.integers(0, 256, (size + 7, size - 5, 3), dtype=np.uint8)]
    first = pictures[0]
    h, w = first.shape[:2]
    pictures.append(first[: max(1, h * 3 // 4), : max(1, w // 2 + 1)])  # other aspect ratio
    pictures.append(first[: max(1, h - 1), : max(1, w - 3)])  # odd sizes
    return pictures


@torch.no_grad()
def predict_reference(task, preprocess: Preprocess, image: np.ndarray):
    """``mode=predict``'s answer for one ``(H, W, 3)`` uint8 image: its eval preprocessing
    (:class:`mbtasks.inference.inputs.Preprocess`, the exported graph's resize) and ``predict_step``, as
    the task's export reads it."""
    return spec_of(task).export.reference(task, preprocess(image)[None], image)


def verify_end_to_end(
    runner, task, train_cfg: DictConfig, pictures: list[np.ndarray], atol: float, box_atol: float
) -> dict:
    """The end-to-end export's answers vs ``mode=predict``'s on each picture (batch 1), and on the first
    twice (batch 2); raises :class:`ExportError` on a mismatch.

    Returns:
        ``{"max_abs_diff": {output: float}, "detections": int}`` (detections compared, detection only).
    """
    spec = spec_of(task).export
    preprocess = Preprocess(train_cfg, task.info)
    diffs: dict[str, float] = {}
    counts: dict[str, int] = {}
    # predict runs the graph's own resize (inference.inputs.Preprocess) and the network graph matched
    # PyTorch just before: what is left is float rounding, which a trained network can amplify
    advice = (
        f"mode=predict and the file share one preprocessing (float bilinear resize) and the network "
        f"graph matched PyTorch, so this is rounding amplified by a sensitive network (on the shared "
        f"photos the measured gap is ~1e-5, benchmarks/export_parity.py) or a bug in the in-graph "
        f"pre/post-processing; if small, raise export.e2e_atol (now {atol:g}: probabilities, scores, "
        f"embedding components) or export.box_atol (now {box_atol:g} network-input pixels); "
        f"export.end_to_end=false exports the network alone"
    )
    for i, image in enumerate(pictures):
        ref = predict_reference(task, preprocess, image)
        batch = np.stack([image, image]) if i == 0 else image[None]
        outs = runner(batch)
        for row in range(len(batch)):
            got = {k: v[row] for k, v in outs.items()}

            def fail(what: str, detail: str, i=i, image=image):
                _fail(what, i, image, detail, advice)

            for k, v in spec.compare(task, ref, got, atol, box_atol, fail).items():
                diffs[k] = max(diffs.get(k, 0.0), v)
            for k, v in spec.counted(ref).items():
                counts[k] = counts.get(k, 0) + v
    units = {"boxes": "network-input pixels"} if "boxes" in diffs else {}
    return {"max_abs_diff": diffs, **counts, **({"units": units} if units else {})}


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
                raise ExportError(
                    f"export verification: output {name!r} has shape {out.shape}, PyTorch {ref.shape}"
                    f" (batch {len(batch)})"
                )
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
                    f"float32 error {noise:.3g}) at batch {len(batch)}"
                )
    return {"max_abs_diff": diffs, "pytorch_fp32_error": own}


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


def _fail(what: str, i: int, image: np.ndarray, detail: str, advice: str = ""):
    raise ExportError(
        f"end-to-end export verification failed on image {i} ({image.shape[1]}x{image.shape[0]}): "
        f"{what} {detail}" + (f". Likely cause: {advice}" if advice else "")
    )


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


def onnx_load(path: Path):
    import onnx

    return onnx.load(str(path))


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


def quantize_int8(
    task, train_cfg: DictConfig, datamodule, src: Path, dst: Path, spec: str | None, limit: int, exclude: list[str]
) -> dict:
    """Quantize the network graph ``src`` to ``dst``, calibrated on up to ``limit`` readable images of
    the training split (or ``export.calibration``), one class after the other (:func:`spread`).
    Unreadable files are replaced by the next candidates, counted, logged and recorded."""
    if limit < 1:
        raise ConfigError(f"export.calibration_images={limit}: expected >= 1")
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
    record = quantize_network(src, dst, batches, INPUT_NAME, exclude)
    return {"type": "int8", **record, "calibration_source": where["root"], "calibration": calibration}


def verify_int8(
    task,
    train_cfg: DictConfig,
    datamodule,
    fp32_path: Path,
    int8_path: Path,
    images: np.ndarray,
    max_drop: dict,
    batch: int,
    threads: int,
) -> dict:
    """The task metric of the fp32 and int8 network graphs on the checkpoint's validation split, and
    their throughput (``batch`` images, ``threads`` onnxruntime threads); raises :class:`ExportError`
    when the int8 metric drops more than the tolerance."""
    spec = spec_of(task).export
    name, key = spec.metric, spec.max_drop_key
    tolerance = float(max_drop.get(name, spec.max_drop))
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


def smoke_end_to_end(runner, task, pictures: list[np.ndarray]) -> dict:
    """The int8 end-to-end file runs on each picture with finite answers of the right shapes."""
    for i, image in enumerate(pictures):
        outs = runner(image[None])
        bad = [k for k, v in outs.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        if bad or any(len(v) != 1 for v in outs.values()):
            _fail("int8 end-to-end file gives non-finite or misshapen outputs", i, image, str(bad))
    return {"images": len(pictures), "sizes": sorted({f"{p.shape[1]}x{p.shape[0]}" for p in pictures})}


def export_task(
    task,
    train_cfg: DictConfig,
    out: str | Path,
    fmt: str = "onnx",
    *,
    end_to_end: bool = True,
    inputs: str | None = None,
    num_inputs: int = 4,
    opset: int = 18,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    e2e_atol: float = 5e-3,
    box_atol: float = 1.0,
    top_k: int = 5,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    max_detections: int | None = None,
    source_checkpoint: str | None = None,
    quantize: str | None = None,
    calibration: str | None = None,
    calibration_images: int = 256,
    int8_exclude=None,
    max_drop: dict | None = None,
    speed_batch: int = 32,
    speed_threads: int = 2,
) -> dict:
    """Export a loaded task to ``out`` (+ ``out.with_suffix('.json')``), verified before it is kept.

    ``export_task(task, train_cfg, out, fmt="onnx", *, end_to_end=True, inputs=None, num_inputs=4,
    opset=18, atol=1e-4, rtol=1e-4, e2e_atol=5e-3, box_atol=1.0, top_k=5, score_threshold=None,
    nms_iou=None, max_detections=None, source_checkpoint=None, quantize=None, calibration=None,
    calibration_images=256, int8_exclude=None, max_drop=None, speed_batch=32, speed_threads=2) -> dict``

    Args:
        task, train_cfg: what :func:`mbtasks.tasks.load_task` returns (the task is copied, not changed).
        out: the file to write (``.onnx`` / ``.pt``); ``<out>.json`` holds the metadata.
        fmt: ``onnx`` (verified in onnxruntime) or ``torchscript`` (verified with ``torch.jit.load``).
        end_to_end: uint8 pixels in, final answers out (:mod:`mbtasks.export.onnx_pipeline`);
            ``False``: the network alone (normalised ``images`` in).
        inputs: image file or folder to verify on (default: the checkpoint's ``data.root``).
        num_inputs: how many images to verify on.
        atol, rtol: the network graph vs PyTorch on the same normalised input.
        e2e_atol, box_atol: the end-to-end answers vs ``mode=predict``'s (probabilities, scores and
            embedding components; box corners in pixels).
        top_k: classification labels per image (capped at the number of classes).
        score_threshold, nms_iou, max_detections: detection overrides of the checkpoint's values.
        source_checkpoint: recorded in the metadata.
        quantize: ``"int8"``: the network is quantized (:mod:`mbtasks.export.quantize`, ONNX only) and
            verified on the task metric instead of raw outputs (:func:`verify_int8`).
        calibration: image file or folder to calibrate on (default: the checkpoint's training split;
            validation images are left out either way); calibration_images: at most this many,
            one class after the other.
        int8_exclude: op types (or ``depthwise``) kept in float; ``None``: the task export's
            ``int8_keep_float`` (embedding: its ``Gemm`` layers), ``[]``: quantize everything.
        max_drop: tolerated metric drop per metric name (``top1``, ``map_50``,
            ``verification_accuracy``; fractions, 0.01 = 1 point); default: the task export's ``max_drop``.
        speed_batch, speed_threads: where fp32 and int8 throughput are measured.

    Returns:
        ``{"path", "metadata", "inputs", "max_abs_diff", ...}`` (the verification record), plus
        ``"quantization"`` (what was quantized and what kept float) with ``quantize``.

    Raises:
        ConfigError: a bad setting, or an existing ``.json`` beside ``out`` that is not an export's.
        ExportError: the exported file does not reproduce PyTorch / ``mode=predict``; nothing is kept.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export.format={fmt!r}: expected one of {list(FORMATS)}")
    if quantize not in (None, "none", "int8"):
        raise ConfigError(f"export.quantize={quantize!r}: expected null or 'int8'")
    quantize = None if quantize == "none" else quantize
    if quantize and fmt != "onnx":
        raise ConfigError(f"export.quantize={quantize}: needs export.format=onnx (onnxruntime quantization), not {fmt}")
    out = Path(out)
    sidecar = check_output(out)
    for path in (out, sidecar):  # what an export killed mid-way left behind
        for stale in remove_stale_siblings(path):
            log.info("removed %s, left by an interrupted export", stale)
    datamodule = int8_datamodule(train_cfg) if quantize else None
    task = copy.deepcopy(task).cpu().float().eval()
    spec = spec_of(task).export
    graph = spec.graph(task)
    pre = (
        preprocessing_of(train_cfg, int(task.info.get("image_size", 224)), task.info["mean"], task.info["std"])
        if end_to_end
        else None
    )
    post = spec.post_settings(
        task, graph, top_k=top_k, score_threshold=score_threshold, nms_iou=nms_iou, max_detections=max_detections
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    files, source = find_images(inputs, train_cfg, max(2, int(num_inputs)))
    images, source = verification_inputs(files, source, inputs, train_cfg, task, max(2, int(num_inputs)))
    meta = metadata(task, train_cfg, graph, fmt, source_checkpoint)
    # Written and checked under temporary names in the same folder; renamed only once verified.
    tmp, tmp_net, tmp_q = (temporary_sibling(out, tag) for tag in ("export", "network", "int8"))
    separate = end_to_end or quantize
    try:
        write(fmt, graph.module, images[:2], tmp_net if separate else tmp, graph.output_names, meta, int(opset))
        diffs = compare(
            load_runner(fmt, tmp_net if separate else tmp),
            graph.module,
            images,
            graph.output_names,
            float(atol),
            float(rtol),
        )
        meta["verification"] = {
            "inputs": source,
            "batch_sizes": [len(images), 1],
            **diffs,
            "atol": float(atol),
            "rtol": float(rtol),
            "runtime": "onnxruntime" if fmt == "onnx" else "torch.jit",
        }
        if quantize:
            meta["quantization"] = quantize_int8(
                task,
                train_cfg,
                datamodule,
                tmp_net,
                tmp_q,
                calibration,
                int(calibration_images),
                list(spec.int8_keep_float if int8_exclude is None else int8_exclude),
            )
            meta["verification"]["int8"] = verify_int8(
                task,
                train_cfg,
                datamodule,
                tmp_net,
                tmp_q,
                images.numpy(),
                max_drop or {},
                int(speed_batch),
                int(speed_threads),
            )
            os.replace(tmp_q, tmp_net)
            if not end_to_end:
                save_onnx(onnx_load(tmp_net), tmp, meta)
        if end_to_end and quantize:
            meta.update(end_to_end_details(task, pre, post))
            write_end_to_end(fmt, tmp_net, tmp, pre, spec.post_kind, post, meta)
            record = smoke_end_to_end(load_e2e_runner(fmt, tmp), task, e2e_pictures(files, pre.size))
            meta["verification"]["end_to_end"] = {
                "vs": "runs on real images (answers checked through the int8 metric, not against mode=predict)",
                **record,
            }
            set_metadata(fmt, tmp, meta)
        elif end_to_end:
            meta.update(end_to_end_details(task, pre, post))
            write_end_to_end(fmt, tmp_net, tmp, pre, spec.post_kind, post, meta)
            pictures = e2e_pictures(files, pre.size)
            record = verify_end_to_end(
                load_e2e_runner(fmt, tmp), task, train_cfg, pictures, float(e2e_atol), float(box_atol)
            )
            meta["verification"]["end_to_end"] = {
                "vs": "mode=predict",
                "images": len(pictures),
                "sizes": sorted({f"{p.shape[1]}x{p.shape[0]}" for p in pictures}),
                "e2e_atol": float(e2e_atol),
                "box_atol": float(box_atol),
                **record,
            }
            set_metadata(fmt, tmp, meta)
        with atomic_path(sidecar) as tmp_json:  # renamed after the model: a failed rename leaves no orphan
            tmp_json.write_text(json.dumps(meta, indent=2, sort_keys=True))
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_net.unlink(missing_ok=True)
        tmp_q.unlink(missing_ok=True)
    summary = ", ".join(f"{k} {v:.2e}" for k, v in diffs["max_abs_diff"].items())
    e2e = meta["verification"].get("end_to_end")
    if e2e and "max_abs_diff" in e2e:
        summary += "; end to end vs mode=predict on {} images ({}): {}".format(
            e2e["images"], ", ".join(e2e["sizes"]), ", ".join(f"{k} {v:.2e}" for k, v in e2e["max_abs_diff"].items())
        )
    if quantize:
        summary += "; " + int8_summary(meta["verification"]["int8"])
    print(f"export: {out} verified with {meta['verification']['runtime']} on {source}: max abs diff {summary}")
    log.info("wrote %s and %s", out, sidecar)
    return {
        "path": str(out),
        "metadata": str(sidecar),
        **meta["verification"],
        **({"quantization": meta["quantization"]} if "quantization" in meta else {}),
    }


def number(e: DictConfig, key: str, default: float) -> float:
    value = e.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"export.{key}={value!r}: expected a number (e.g. {default})")
    return float(value)


def max_drop_of(e: DictConfig, key: str, default: float) -> float:
    """``export.int8_max_drop_*``: a drop of the metric, a fraction like every metric (0.01 = 1 point)."""
    value = number(e, key, default)
    if value > 1:
        raise ConfigError(
            f"export.{key}={value:g}: the tolerated drop is a fraction of the metric, like every "
            f"metric mbtasks reports (0.01 = 1 point of top-1); expected <= 1"
        )
    return value


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    fmt = str(cfg.export.format)
    if fmt not in FORMATS:
        raise ConfigError(f"export.format={fmt!r}: expected one of {list(FORMATS)}")
    if cfg.export.get("output"):  # refused before the checkpoint is even loaded
        check_output(Path(str(cfg.export.output)))
    task, train_cfg = load_task(cfg.ckpt_path)
    # data.* keys given on the command line apply on top of the checkpoint's (as for mode=test): where
    # the inputs, the calibration images and the INT8 validation split come from
    train_cfg.data = eval_data_config(cfg, train_cfg, overrides)
    spec = spec_of(task).export
    e = cfg.export
    out = Path(e.output) if e.get("output") else run_dir / f"{task.name}{FORMATS[fmt]}"
    return export_task(
        task,
        train_cfg,
        out,
        fmt,
        end_to_end=bool(e.get("end_to_end", True)),
        inputs=e.get("inputs"),
        num_inputs=int(e.num_inputs),
        opset=int(e.opset),
        atol=float(e.atol),
        rtol=float(e.rtol),
        e2e_atol=float(e.get("e2e_atol", 5e-3)),
        box_atol=float(e.get("box_atol", 1.0)),
        # predict.top_k is classification's own key now (absent for the other tasks)
        top_k=int(e.get("top_k") or OmegaConf.select(cfg, "predict.top_k", default=None) or 5),
        score_threshold=e.get("score_threshold"),
        nms_iou=e.get("nms_iou"),
        max_detections=e.get("max_detections"),
        source_checkpoint=str(cfg.ckpt_path),
        quantize=e.get("quantize"),
        calibration=e.get("calibration"),
        calibration_images=int(e.get("calibration_images", 256)),
        int8_exclude=None if e.get("int8_exclude") is None else list(e.int8_exclude),
        max_drop={spec.metric: max_drop_of(e, spec.max_drop_key, spec.max_drop)},
        speed_batch=int(e.get("speed_batch", 32)),
        speed_threads=int(e.get("speed_threads", 2)),
    )
