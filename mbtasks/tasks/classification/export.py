"""Classification's export: ``images -> (logits, probs)``, a top-k tail end to end
(``probs (N, K), scores (N, k), labels (N, k)``), top-1 for INT8."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from mbtasks.export.settings import TaskExportOptions, max_drop_setting
from mbtasks.settings import setting
from mbtasks.tasks.spec import ExportGraph, TaskExport


@dataclass(frozen=True, kw_only=True)
class ClassificationExportOptions(TaskExportOptions):
    """Classification's ``export.*`` keys (``conf/task/export/classification.yaml``)."""

    top_k: int = setting(integer=True, low=1, example="5")
    int8_max_drop_top1: float = max_drop_setting()


class ClassifierGraph(nn.Module):
    """``images -> (logits (N, K), probs (N, K))``."""

    output_names = ("logits", "probs")

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        return logits, logits.softmax(dim=1)


class TopK(nn.Module):
    """``(logits, probs)`` -> ``(probs, scores, labels)``, the ``k`` best classes, decreasing."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = int(k)

    def forward(self, outputs: tuple[Tensor, Tensor], pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probs = outputs[1]
        scores, labels = probs.topk(self.k, dim=1)
        return probs, scores, labels


class ClassificationExport(TaskExport):
    metric: ClassVar[str] = "top1"

    def graph(self, task) -> ExportGraph:
        graph = ClassifierGraph(task.model).eval()
        return ExportGraph(
            graph,
            graph.output_names,
            {"outputs": {"logits": "(N, K) class logits", "probs": "(N, K) softmax probabilities"}},
        )

    def post_settings(self, task, graph, options: ClassificationExportOptions) -> dict:
        return {"top_k": min(options.top_k, len(task.class_names))}

    def e2e_details(self, post: dict) -> dict:
        return {
            "outputs": {
                "probs": "(N, K) softmax probabilities",
                "scores": f"(N, {post['top_k']}) top-k probabilities, decreasing",
                "labels": "(N, k) int64 indices into class_names",
            },
            "top_k": post["top_k"],
        }

    def onnx_tail(self, g, post: dict) -> None:
        """Network output ``probs`` -> ``scores, labels`` (top-k)."""
        num_classes = g.network_outputs["probs"][1]
        k = max(1, min(int(post["top_k"]), num_classes))
        scores, labels = g.op("TopK", "probs", g.const([k], np.int64), axis=1, largest=1, sorted=1, n_out=2)
        g.op("Identity", scores, out="scores")
        g.op("Identity", labels, out="labels")
        g.output("probs", np.float32, ["N", num_classes])
        g.output("scores", np.float32, ["N", k])
        g.output("labels", np.int64, ["N", k])

    def torch_tail(self, post: dict) -> nn.Module:
        return TopK(post["top_k"])

    def compare(self, task, ref, got, atol, options, fail) -> dict[str, float]:
        d = float(np.abs(got["probs"] - ref).max())
        if not d <= atol:
            fail("probabilities differ from mode=predict's by", f"{d:.3g} (export.e2e_atol={atol})")
        best = np.sort(ref)[::-1][: len(got["scores"])]
        # the same labels, up to ties within the tolerance
        if not (np.abs(got["scores"] - best).max() <= atol and np.abs(ref[got["labels"]] - best).max() <= atol):
            fail(
                "top-k labels differ from mode=predict's:",
                f"{got['labels'].tolist()} vs {np.argsort(-ref, kind='stable')[: len(best)].tolist()}",
            )
        return {"probs": d}

    def evaluate(self, task, datamodule, runner, batches) -> float:
        """Top-1 accuracy, a fraction (torchmetrics, as the task logs ``val/acc_top1``)."""
        metric = task.val_metrics["acc_top1"].clone()
        metric.reset()
        for images, labels in batches:
            metric.update(torch.from_numpy(runner(images.numpy())[0]), labels)
        return float(metric.compute())
