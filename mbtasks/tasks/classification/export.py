"""Classification's export: ``images -> (logits, probs)``, a top-k tail end to end, top-1 for INT8."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mbtasks.errors import ConfigError
from mbtasks.tasks.spec import ExportGraph, TaskExport


class ClassifierGraph(nn.Module):
    """``images -> (logits (N, K), probs (N, K))``."""

    output_names = ("logits", "probs")

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        return logits, logits.softmax(dim=1)


class ClassificationExport(TaskExport):
    metric = "top1"
    max_drop_key = "int8_max_drop_top1"
    max_drop = 0.01  # a fraction, as every metric: 1 point
    post_kind = "topk"

    def graph(self, task) -> ExportGraph:
        graph = ClassifierGraph(task.model).eval()
        return ExportGraph(
            graph,
            graph.output_names,
            {"outputs": {"logits": "(N, K) class logits", "probs": "(N, K) softmax probabilities"}},
        )

    def post_settings(self, task, graph, top_k: int = 5, **overrides) -> dict:
        if int(top_k) < 1:
            raise ConfigError(f"export.top_k={top_k}: expected >= 1")
        return {"top_k": min(int(top_k), len(task.class_names))}

    def e2e_details(self, post: dict) -> dict:
        return {
            "outputs": {
                "probs": "(N, K) softmax probabilities",
                "scores": f"(N, {post['top_k']}) top-k probabilities, decreasing",
                "labels": "(N, k) int64 indices into class_names",
            },
            "top_k": post["top_k"],
        }

    def compare(self, task, ref, got, atol, box_atol, fail) -> dict[str, float]:
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
