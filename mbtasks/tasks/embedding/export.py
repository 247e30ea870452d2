"""Embedding's export: ``images -> embeddings`` (flip TTA inside), passed through end to end,
verification accuracy for INT8."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from mbtasks.errors import ConfigError
from mbtasks.export.settings import TaskExportOptions, max_drop_setting
from mbtasks.metrics.verification import VerificationMetric
from mbtasks.tasks.spec import ExportGraph, TaskExport


@dataclass(frozen=True, kw_only=True)
class EmbeddingExportOptions(TaskExportOptions):
    """Embedding's ``export.*`` keys (``conf/task/export/embedding.yaml``)."""

    int8_max_drop_verification: float = max_drop_setting()


class EmbeddingGraph(nn.Module):
    """``images -> (embeddings (N, D),)``, L2-normalised; with ``flip`` the image and its mirror
    are embedded, summed and re-normalised (:meth:`EmbeddingNet.embed`, as predict does)."""

    output_names = ("embeddings",)

    def __init__(self, model: nn.Module, flip: bool) -> None:
        super().__init__()
        self.model = model
        self.flip = bool(flip)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model.embed(images, flip=self.flip),)


class EmbeddingExport(TaskExport):
    """No end-to-end tail: the file's output is the network's ``embeddings``."""

    metric: ClassVar[str] = "verification_accuracy"
    # int8 in the head's fully connected (Gemm) layers cost ORL 0.034 verification accuracy, float
    # 0.001, at no speed cost (1.56x vs 1.64x the fp32 graph; README "INT8")
    int8_keep_float: ClassVar[tuple[str, ...]] = ("Gemm",)

    def graph(self, task) -> ExportGraph:
        flip = bool(task.flip_tta)
        graph = EmbeddingGraph(task.model, flip).eval()
        return ExportGraph(
            graph,
            graph.output_names,
            {
                "outputs": {"embeddings": "(N, D) L2-normalised embeddings"},
                "flip_tta": flip,
                "thresholds": thresholds(task),
                "distance": "squared L2: same identity when distance <= thresholds.verification; a gallery "
                "search answers unknown beyond thresholds.identification (1:N)",
            },
        )

    def e2e_details(self, post: dict) -> dict:
        return {"outputs": {"embeddings": "(N, D) L2-normalised embeddings"}}

    def compare(self, task, ref, got, atol, options, fail) -> dict[str, float]:
        d = float(np.abs(got["embeddings"] - ref).max())
        if not d <= atol:
            fail("embedding differs from mode=predict's by", f"{d:.3g} (export.e2e_atol={atol})")
        return {"embeddings": d}

    def evaluate(self, task, datamodule, runner, batches) -> float:
        """Verification accuracy on the validation pairs (:class:`VerificationMetric`, as the task)."""
        store = VerificationMetric()
        for images, index, ok in batches:
            store.update(index, torch.from_numpy(runner(images.numpy())[0]), ok)
        verified = store.verify(datamodule.pair_set("val"), tuple(task.fars))
        if verified is None:
            raise ConfigError(
                "export.quantize=int8: fewer than 2 validation pairs with readable images to measure "
                "verification accuracy on"
            )
        return float(verified.result.accuracy)


def thresholds(task) -> dict:
    """The checkpoint's decision thresholds: 1:1 verification, and the 1:N gallery one when it stores it
    (older checkpoints hold -1 there: a gallery search then uses the verification threshold)."""
    out = {"verification": float(task.threshold)}
    if float(task.open_set_threshold) >= 0:
        out.update(identification=float(task.open_set_threshold), identification_gallery=int(task.open_set_gallery))
    return out
