"""A trained checkpoint as a Python object: images in, typed results out.

:class:`Predictor` is the base of every task's predictor (``mbtasks/tasks/<name>/predictor.py``):
what ``mode=predict`` runs and what :func:`mbtasks.load` returns (wrapped in :class:`mbtasks.Model`,
which adds ``export`` and ``profile``). It takes image files, folders, PIL images, numpy ``(H, W, 3)``
arrays or tensors, one or many, preprocesses them with the checkpoint's own eval transforms, and
runs the task's ``predict_step`` on the fast path chosen once at construction. It writes no files:
``mode=predict`` writes its results through the task (``TaskSpec.write_predictions``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mbtasks.bn_folding import fold_batchnorm
from mbtasks.inference.inputs import Preprocess, Source, as_sources, batches
from mbtasks.inference.settings import check_argument

log = logging.getLogger(__name__)


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


class Predictor:
    """A loaded task, ready for inference (made by :func:`mbtasks.tasks.load_predictor` / :func:`mbtasks.load`).

    The task is moved to ``device`` and, once, put on the fast path: BatchNorm folded into the
    convolutions, NHWC memory format, bf16 autocast with float32 outputs. These change the task
    it is given (they are the point of building a predictor).

    Args:
        task: a task in eval mode (:func:`mbtasks.tasks.load_task`).
        train_cfg: the run config it was trained with (eval transforms, mean / std).
        device: ``"cpu"``, ``"cuda"``... (default: CUDA when available).
        fold_bn: fold every BatchNorm into its conv (same outputs, faster on CPU).
        channels_last: NHWC memory format.
        precision: ``"32"`` or ``"bf16"`` (autocast; outputs come back as float32).
        batch_size: images per forward pass.
        checkpoint: the file it came from (messages, ``Model.export``).
    """

    def __init__(
        self,
        task,
        train_cfg: DictConfig,
        device: str | torch.device | None = None,
        fold_bn: bool = True,
        channels_last: bool = False,
        precision: str | int = "32",
        batch_size: int = 32,
        checkpoint: str | Path | None = None,
    ) -> None:
        precision = str(precision)
        check_argument("precision", precision, "predict.precision")
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
        self.preprocess = Preprocess(train_cfg, task.info)

    def __getattr__(self, name: str):
        # only reached for names the class lacks: say which task's model this is
        if name.startswith("_") or name in ("task", "train_cfg", "checkpoint"):
            raise AttributeError(name)
        raise AttributeError(
            f"{name!r}: {self.checkpoint or 'this model'} is a {self.task_name} model, which has "
            f"no {name}; it offers {sorted(n for n in dir(type(self)) if not n.startswith('_'))}"
        )

    # ------------------------------------------------------------------ what the checkpoint says
    @property
    def task_name(self) -> str:
        """``classification``, ``detection``, ``embedding``..."""
        return self.task.name

    @property
    def class_names(self) -> list[str]:
        return list(getattr(self.task, "class_names", None) or [])

    @property
    def image_size(self) -> int:
        return int(self.task.info.get("image_size", 224))

    # ------------------------------------------------------------------ batching
    def batches(
        self, inputs: Any, skipped: dict[str, str] | None = None
    ) -> Iterator[tuple[list[Source], list[tuple[int, int]], torch.Tensor]]:
        """Yield ``(sources, original (h, w) sizes, normalised batch)``.

        Unreadable files go to ``skipped`` (name -> reason), or raise :class:`DataError` without it.
        """
        yield from batches(as_sources(inputs), self.preprocess, self.batch_size, skipped)

    @torch.no_grad()
    def forward(self, batch: torch.Tensor):
        """The task's ``predict_step`` on a normalised batch."""
        batch = batch.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if not self.bf16:
            return self.task.predict_step(batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.task.predict_step(batch)

    # ------------------------------------------------------------------ the task's part
    def predict(self, inputs: Any, skipped: dict[str, str] | None = None, **options) -> list:
        """One typed result per readable input image (the task's ``results`` module), in input order."""
        raise NotImplementedError
