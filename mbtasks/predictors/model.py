"""A trained checkpoint as a Python object: images in, typed results out.

:class:`Predictor` is what ``mode=predict`` runs and what :func:`mbtasks.load` returns
(as :class:`mbtasks.Model`, which adds ``export`` and ``profile``). It takes image files,
folders, PIL images, numpy ``(H, W, 3)`` arrays or tensors, one or many, preprocesses them
with the checkpoint's own eval transforms, and returns one result per image
(:mod:`mbtasks.results`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from mbtasks.data.io import ImageReadError, read_rgb
from mbtasks.errors import ConfigError, DataError
from mbtasks.fusion import fold_batchnorm
from mbtasks.predictors.common import collect_inputs, eval_pipeline
from mbtasks.results import Classification, Detections, Embedding, Identity, TopK, Verification

log = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


@dataclass
class Source:
    """One input image: its name, and a path to read or the pixels given in memory."""

    name: str
    path: Path | None = None
    pixels: np.ndarray | None = None

    def read(self) -> np.ndarray:
        return self.pixels if self.pixels is not None else read_rgb(self.path)


def _as_rgb_array(image: Any, name: str) -> np.ndarray:
    """A PIL image, ``(H, W[, C])`` array or ``(C, H, W)`` tensor as ``(H, W, 3)`` uint8 RGB.

    Float arrays and tensors are taken as [0, 1]; grey images are repeated, alpha is dropped.
    """
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            raise DataError(f"{name}: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DataError(f"{name}: expected an (H, W, 3) image array, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def as_sources(inputs: Any) -> list[Source]:
    """Paths (files or folders, searched recursively), PIL images, arrays or tensors, one or many.

    A 4-D array ``(N, H, W, 3)`` or tensor ``(N, 3, H, W)`` is N images.
    """
    if isinstance(inputs, str | Path):
        return [Source(str(p), path=p) for p in collect_inputs(str(inputs))]
    if isinstance(inputs, Image.Image):
        return [Source("image_0", pixels=_as_rgb_array(inputs, "image_0"))]
    if isinstance(inputs, np.ndarray | torch.Tensor) and inputs.ndim == 4:
        return [Source(f"image_{i}", pixels=_as_rgb_array(x, f"image_{i}")) for i, x in enumerate(inputs)]
    if isinstance(inputs, np.ndarray | torch.Tensor):
        return [Source("image_0", pixels=_as_rgb_array(inputs, "image_0"))]
    if isinstance(inputs, list | tuple):
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, str | Path) or (isinstance(item, np.ndarray | torch.Tensor) and item.ndim == 4):
                out += [Source(s.name if s.path else f"image_{i}_{j}", s.path, s.pixels)
                        for j, s in enumerate(as_sources(item))]
            else:
                out.append(Source(f"image_{i}", pixels=_as_rgb_array(item, f"image_{i}")))
        return out
    raise DataError(f"cannot read {type(inputs).__name__} as images: expected paths, PIL images, "
                    "numpy (H, W, 3) arrays or (3, H, W) tensors")


def _to_float(output):
    """Floating tensors of a (nested) model output back in float32 (after bf16 autocast)."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(_to_float(o) for o in output))
    if isinstance(output, list | tuple):
        return type(output)(_to_float(o) for o in output)
    if isinstance(output, dict):
        return {k: _to_float(v) for k, v in output.items()}
    return output


@contextlib.contextmanager
def fast_inference(task, channels_last: bool = False, precision="32", fold_bn: bool = False) -> Iterator[None]:
    """The fast path around a bare task (what :class:`Predictor` sets up once): fold BatchNorm, NHWC,
    bf16 autocast with float32 outputs. Folding and NHWC stay after the block; autocast does not."""
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
    hook = task.model.register_forward_hook(lambda module, args, output: _to_float(output))
    try:
        with torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16):
            yield
    finally:
        hook.remove()


@dataclass
class Gallery:
    """Embedded gallery images: ``vectors`` ``(M, D)`` with the ``identities`` and ``files`` of each row."""

    identities: list[str]
    files: list[str]
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.files)


class Predictor:
    """A checkpoint of any task, ready for inference.

    Args:
        task: a task in eval mode (:func:`mbtasks.tasks.load_task`).
        train_cfg: the run config it was trained with (eval transforms, mean / std).
        device: ``"cpu"``, ``"cuda"``... (default: CUDA when available).
        fold_bn: fold every BatchNorm into its conv (same outputs, faster on CPU).
        channels_last: NHWC memory format.
        precision: ``"32"`` or ``"bf16"`` (autocast; outputs come back as float32).
        batch_size: images per forward pass.
    """

    def __init__(self, task, train_cfg: DictConfig, device: str | torch.device | None = None, fold_bn: bool = True,
                 channels_last: bool = False, precision: str | int = "32", batch_size: int = 32,
                 checkpoint: str | Path | None = None) -> None:
        precision = str(precision)
        if precision not in ("32", "32-true", "bf16", "bf16-mixed"):
            raise ConfigError(f"predict.precision={precision!r}: expected 32 or bf16")
        self.task, self.train_cfg, self.checkpoint = task.eval(), train_cfg, checkpoint
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.task.to(self.device)
        if fold_bn:
            fold_batchnorm(self.task.model)
        self.channels_last = channels_last
        if channels_last:
            self.task.to(memory_format=torch.channels_last)
        self.bf16 = precision.startswith("bf16")
        if self.bf16:
            self.task.model.register_forward_hook(lambda module, args, output: _to_float(output))
        self.batch_size = int(batch_size)
        self._pipeline = eval_pipeline(train_cfg)
        self._mean, self._std = tuple(train_cfg.data.mean), tuple(train_cfg.data.std)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> Predictor:
        """Load ``path`` (any task's ``best.ckpt`` / ``last.ckpt``); ``kwargs`` as for the constructor."""
        from mbtasks.tasks import load_task

        task, train_cfg = load_task(path)
        return cls(task, train_cfg, checkpoint=path, **kwargs)

    # ------------------------------------------------------------------ what the checkpoint says
    @property
    def task_name(self) -> str:
        """``classification``, ``detection`` or ``embedding``."""
        return self.task.name

    @property
    def class_names(self) -> list[str]:
        return list(getattr(self.task, "class_names", None) or [])

    @property
    def threshold(self) -> float:
        """Embedding: the verification threshold on squared L2 distances chosen on validation pairs."""
        self._need("embedding", "threshold")
        return float(self.task.threshold)

    @property
    def image_size(self) -> int:
        return int(self.task.info.get("image_size", 224))

    def _need(self, task: str, what: str) -> None:
        if self.task_name != task:
            raise ConfigError(f"{what} needs a {task} checkpoint; {self.checkpoint or 'this model'} is {self.task_name}")

    # ------------------------------------------------------------------ batching
    def _preprocess(self, image: np.ndarray) -> torch.Tensor:
        from mbtasks.data.transforms import apply, to_tensor

        return to_tensor(apply(self._pipeline, image)["image"], self._mean, self._std)

    def batches(self, inputs: Any, skipped: dict[str, str] | None = None
                ) -> Iterator[tuple[list[Source], list[tuple[int, int]], torch.Tensor]]:
        """Yield ``(sources, original (h, w) sizes, normalised batch)``.

        Unreadable files go to ``skipped`` (name -> reason), or raise :class:`DataError` without it.
        """
        sources = inputs if isinstance(inputs, list) and all(isinstance(s, Source) for s in inputs) else as_sources(inputs)
        done, sizes, tensors = [], [], []
        for source in sources:
            try:
                image = source.read()
            except ImageReadError as err:
                if skipped is None:
                    raise DataError(str(err)) from err
                skipped[source.name] = str(err)
                continue
            done.append(source)
            sizes.append(image.shape[:2])
            tensors.append(self._preprocess(image))
            if len(done) == self.batch_size:
                yield done, sizes, torch.stack(tensors)
                done, sizes, tensors = [], [], []
        if done:
            yield done, sizes, torch.stack(tensors)

    @torch.no_grad()
    def forward(self, batch: torch.Tensor):
        """The task's ``predict_step`` on a normalised batch (class probabilities, detections in input pixels, embeddings)."""
        batch = batch.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if not self.bf16:
            return self.task.predict_step(batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.task.predict_step(batch)

    # ------------------------------------------------------------------ predict
    def predict(self, inputs: Any, top_k: int = 5, skipped: dict[str, str] | None = None
                ) -> list[Classification] | list[Detections] | list[Embedding]:
        """One typed result per readable input image, in input order.

        Args:
            inputs: an image path, a folder (every image below it, sorted), a PIL image, a numpy
                ``(H, W, 3)`` uint8 array (float: [0, 1]), a ``(3, H, W)`` tensor, or a list / batch of those.
            top_k: classification: how many classes each result lists.
            skipped: collects unreadable files (name -> reason); without it they raise :class:`DataError`.

        Returns:
            :class:`~mbtasks.results.Classification` (``label``, ``score``, ``top_k``),
            :class:`~mbtasks.results.Detections` (``boxes`` xyxy original pixels, ``scores``,
            ``labels``, ``names``; ``draw()`` / ``save()``) or
            :class:`~mbtasks.results.Embedding` (``vector``), by the checkpoint's task.
        """
        if self.task_name == "classification":
            return list(self._classify(inputs, top_k, skipped))
        if self.task_name == "detection":
            return list(self._detect(inputs, skipped))
        return [Embedding(s.name, v) for s, v in zip(*self.embed(inputs, skipped), strict=True)]

    def _classify(self, inputs, top_k: int, skipped) -> Iterator[Classification]:
        names = self.class_names
        k = max(1, min(int(top_k), len(names)))
        for sources, _, batch in self.batches(inputs, skipped):
            scores, idx = self.forward(batch).float().cpu().topk(k, dim=1)
            for source, s_row, i_row in zip(sources, scores.tolist(), idx.tolist(), strict=True):
                top = [TopK(names[i], s) for s, i in zip(s_row, i_row, strict=True)]
                yield Classification(source.name, top[0].label, top[0].score, top)

    def _detect(self, inputs, skipped) -> Iterator[Detections]:
        from mbtasks.tasks.detection import to_original

        names = self.class_names
        for sources, sizes, batch in self.batches(inputs, skipped):
            detections = to_original(self.forward(batch), tuple(batch.shape[-2:]), sizes)
            for source, det in zip(sources, detections, strict=True):
                labels = det["labels"].cpu().numpy().astype(np.int64)
                yield Detections(source.name, det["boxes"].float().cpu().numpy(), det["scores"].float().cpu().numpy(),
                                 labels, [names[i] for i in labels], source.pixels)

    # ------------------------------------------------------------------ embeddings
    def embed(self, inputs: Any, skipped: dict[str, str] | None = None) -> tuple[list[Source], np.ndarray]:
        """Embedding checkpoints: the embedded sources and their ``(N, D)`` float32 unit-length rows."""
        self._need("embedding", "embed")
        done, rows = [], []
        for sources, _, batch in self.batches(inputs, skipped):
            rows.append(self.forward(batch).float().cpu().numpy())
            done.extend(sources)
        dim = int(self.task.model.dim)
        return done, (np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)).astype(np.float32)

    def verify(self, a: ImageInput, b: ImageInput) -> Verification:
        """Are two images the same identity? Squared L2 distance against the checkpoint's threshold."""
        _, emb = self.embed([a, b])
        distance = float(np.sum((emb[0] - emb[1]) ** 2))
        return Verification(distance <= self.threshold, distance, self.threshold)

    def gallery(self, spec: str | Path | dict[str, Any] | Gallery, skipped: dict[str, str] | None = None) -> Gallery:
        """Embed a gallery: a folder ``<dir>/<identity>/<image>`` or ``{identity: images}``."""
        if isinstance(spec, Gallery):
            return spec
        if isinstance(spec, str | Path):
            from mbtasks.data.faces import scan_identities

            spec = scan_identities(spec)
        sources, owners = [], []
        for identity, images in spec.items():
            found = as_sources(images if isinstance(images, list | tuple) else [images])
            sources += found
            owners += [str(identity)] * len(found)
        owner = {id(s): o for s, o in zip(sources, owners, strict=True)}
        done, vectors = self.embed(sources, skipped if skipped is not None else {})
        if not done:
            raise DataError(f"{spec if not isinstance(spec, dict) else 'gallery'}: no readable gallery image")
        return Gallery([owner[id(s)] for s in done], [s.name for s in done], vectors)

    def nearest(self, vectors: np.ndarray, gallery: Gallery, names: list[str]) -> list[Identity]:
        """Each row's nearest gallery image; ``"unknown"`` when farther than the threshold."""
        threshold = self.threshold
        # squared L2 of unit vectors: 2 - 2 cos
        dist = np.clip(2.0 - 2.0 * vectors @ gallery.vectors.T, 0.0, 4.0)
        out = []
        for name, row in zip(names, dist, strict=True):
            j = int(np.argmin(row))
            d, who = float(row[j]), gallery.identities[j]
            out.append(Identity(name, who if d <= threshold else "unknown", who, d, d <= threshold, gallery.files[j]))
        return out

    def identify(self, images: Any, gallery: str | Path | dict[str, Any] | Gallery,
                 skipped: dict[str, str] | None = None) -> list[Identity]:
        """The nearest gallery identity of each image (``"unknown"`` above the threshold).

        Args:
            images: query images (any input :meth:`predict` takes).
            gallery: a folder ``<dir>/<identity>/<image>``, ``{identity: images}``, or a :class:`Gallery`
                from :meth:`gallery` (embedded once, reused).
        """
        gallery = self.gallery(gallery)
        done, vectors = self.embed(images, skipped)
        return self.nearest(vectors, gallery, [s.name for s in done])
