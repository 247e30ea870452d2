"""mode=export's checks: the network graph against PyTorch, the end-to-end file against ``mode=predict``.

The verification images are real ones (``export.inputs``, else the checkpoint's ``data.root``; random
ones, with a warning, when there are none). :func:`compare` runs the written network graph at two batch
sizes; :func:`verify_end_to_end` runs the end-to-end file on each picture at its own size and compares its
answers with ``mode=predict``'s through the task (``TaskExport.compare``). Either raises
:class:`~mbtasks.errors.ExportError` on a mismatch, naming the output and the tolerance keys.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mbtasks.data.image_files import ImageReadError, is_image_file, read_rgb
from mbtasks.errors import ConfigError, ExportError
from mbtasks.export.settings import ExportSettings
from mbtasks.inference.inputs import Preprocess, file_batches
from mbtasks.tasks import spec_of

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
    runner, task, train_cfg: DictConfig, pictures: list[np.ndarray], settings: ExportSettings
) -> dict:
    """The end-to-end export's answers vs ``mode=predict``'s on each picture (batch 1), and on the first
    twice (batch 2), within ``export.e2e_atol`` and the task's own tolerances; raises :class:`ExportError`
    on a mismatch.

    Returns:
        ``{"max_abs_diff": {output: float}, ...}`` plus what the task counts (detection: ``detections``).
    """
    spec = spec_of(task).export
    atol, options = float(settings.e2e_atol), settings.options
    preprocess = Preprocess(train_cfg, task.info)
    own = "".join(
        f" or export.{k} (now {v:g}{' ' + spec.tolerance_units[k] if k in spec.tolerance_units else ''})"
        for k, v in spec.tolerances(options).items()
    )
    diffs: dict[str, float] = {}
    counts: dict[str, int] = {}
    # predict runs the graph's own resize (inference.inputs.Preprocess) and the network graph matched
    # PyTorch just before: what is left is float rounding, which a trained network can amplify
    advice = (
        f"mode=predict and the file share one preprocessing (float bilinear resize) and the network "
        f"graph matched PyTorch, so this is rounding amplified by a sensitive network (on the shared "
        f"photos the measured gap is ~1e-5, benchmarks/export_parity.py) or a bug in the in-graph "
        f"pre/post-processing; if small, raise export.e2e_atol (now {atol:g}: probabilities, scores, "
        f"embedding components){own}; export.end_to_end=false exports the network alone"
    )
    for i, image in enumerate(pictures):
        ref = predict_reference(task, preprocess, image)
        batch = np.stack([image, image]) if i == 0 else image[None]
        outs = runner(batch)
        for row in range(len(batch)):
            got = {k: v[row] for k, v in outs.items()}

            def fail(what: str, detail: str, i=i, image=image):
                _fail(what, i, image, detail, advice)

            for k, v in spec.compare(task, ref, got, atol, options, fail).items():
                diffs[k] = max(diffs.get(k, 0.0), v)
            for k, v in spec.counted(ref).items():
                counts[k] = counts.get(k, 0) + v
    units = {k: spec.diff_units[k] for k in diffs if k in spec.diff_units}
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


def _fail(what: str, i: int, image: np.ndarray, detail: str, advice: str = ""):
    raise ExportError(
        f"end-to-end export verification failed on image {i} ({image.shape[1]}x{image.shape[0]}): "
        f"{what} {detail}" + (f". Likely cause: {advice}" if advice else "")
    )


def smoke_end_to_end(runner, task, pictures: list[np.ndarray]) -> dict:
    """The int8 end-to-end file runs on each picture with finite answers of the right shapes."""
    for i, image in enumerate(pictures):
        outs = runner(image[None])
        bad = [k for k, v in outs.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        if bad or any(len(v) != 1 for v in outs.values()):
            _fail("int8 end-to-end file gives non-finite or misshapen outputs", i, image, str(bad))
    return {"images": len(pictures), "sizes": sorted({f"{p.shape[1]}x{p.shape[0]}" for p in pictures})}
