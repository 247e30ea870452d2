"""A fourth task, written only here and in ``tests/conf/`` (``task/toy.yaml``, ``task/predict/toy.yaml``,
``task/export/toy.yaml``): proof that adding a task needs no edit under ``mbtasks/`` (docs/architecture.md).
It classifies with a max-pooled 1x1-conv head, and has its own predict option (``predict.toy_min_score``,
used when ``mode=predict`` writes ``toy.json``), its own figure (validation accuracy per class), and its
own end-to-end export tail (the label and a temperature-scaled confidence) with its own export option
(``export.toy_temperature``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from mbtasks.atomic_files import write_json_atomic
from mbtasks.export.settings import TaskExportOptions, max_drop_setting
from mbtasks.inference import Predictor
from mbtasks.inference.settings import PredictOptions, PredictSettings
from mbtasks.settings import setting
from mbtasks.tasks.base import BaseTask, TaskFigure
from mbtasks.tasks.spec import ExportGraph, TaskExport, TaskSpec


class ToyHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(features[-1]).amax(dim=(2, 3))


class ToyNet(nn.Module):
    def __init__(self, backbone: nn.Module, head: ToyHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def class_accuracy_figure(accuracy: np.ndarray, names: Sequence[str]) -> Figure:
    """The toy's own figure, a pure function: validation accuracy per class as bars."""
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.bar(range(len(names)), accuracy, tick_label=list(names))
    ax.set_ylim(0, 1)
    ax.set_ylabel("validation accuracy")
    fig.tight_layout()
    return fig


class ToyPredictor(Predictor):
    def predict(self, inputs, skipped: dict[str, str] | None = None) -> list[tuple[str, str, float]]:
        """``(source, label, score)`` per readable image."""
        out = []
        for sources, _, batch in self.batches(inputs, skipped):
            scores, best = self.forward(batch).max(1)
            out += [(s.name, self.class_names[int(i)], float(p)) for s, i, p in zip(sources, best, scores, strict=True)]
        return out


@dataclass(frozen=True, kw_only=True)
class ToyPredictOptions(PredictOptions):
    """``tests/conf/task/predict/toy.yaml``."""

    section: ClassVar[str] = "predict"
    # images whose best score is below it are left out of toy.json
    toy_min_score: float = setting(low=0, high=1, example="0.5")


def write_predictions(model: ToyPredictor, files: list[Path], settings: PredictSettings, run_dir: Path) -> dict:
    found = model.predict(files, skipped={})
    out = {"labels": {name: label for name, label, score in found if score >= settings.options.toy_min_score}}
    write_json_atomic(run_dir / "toy.json", out)
    return out


@dataclass(frozen=True, kw_only=True)
class ToyExportOptions(TaskExportOptions):
    """The toy's ``export.*`` keys (defaults: ``tests/conf/task/export/toy.yaml``)."""

    toy_temperature: float = setting(low=0, low_in=False, example="1.0")
    int8_max_drop_top1: float = max_drop_setting()


class ToyTail(nn.Module):
    """``(probs,)`` -> ``(probs, label (N,) int64, confidence (N,))``: the best class and its probability
    after temperature scaling (``softmax(log(probs) / T)``)."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, outputs: tuple[Tensor], pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probs = outputs[0]
        scaled = (probs.log() / self.temperature).softmax(1)
        return probs, probs.argmax(1), scaled.amax(1)


class ToyExport(TaskExport):
    metric = "top1"

    def graph(self, task) -> ExportGraph:
        class Graph(nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, images):
                return (self.net(images).softmax(1),)

        return ExportGraph(Graph(task.model).eval(), ("probs",), {"outputs": {"probs": "(N, K)"}})

    def post_settings(self, task, graph, options: ToyExportOptions) -> dict:
        return {"temperature": options.toy_temperature}

    def e2e_details(self, post: dict) -> dict:
        return {
            "outputs": {"probs": "(N, K)", "label": "(N,) int64", "confidence": "(N,) max softmax(log(probs) / T)"},
            "temperature": post["temperature"],
        }

    def onnx_tail(self, g, post: dict) -> None:
        k = g.network_outputs["probs"][1]
        scaled = g.op("Softmax", g.op("Div", g.op("Log", "probs"), g.const(post["temperature"], np.float32)), axis=1)
        g.op("ArgMax", "probs", axis=1, keepdims=0, out="label")
        g.op("ReduceMax", scaled, g.const([1], np.int64), keepdims=0, out="confidence")
        g.output("probs", np.float32, ["N", k])
        g.output("label", np.int64, ["N"])
        g.output("confidence", np.float32, ["N"])

    def torch_tail(self, post: dict) -> nn.Module:
        return ToyTail(post["temperature"])

    def compare(self, task, ref, got, atol, options, fail) -> dict[str, float]:
        d = float(np.abs(got["probs"] - ref).max())
        if d > atol:
            fail("probabilities differ by", f"{d:.3g}")
        if ref[int(got["label"])] < ref.max() - atol:  # the best class, up to ties
            fail("label differs:", f"{int(got['label'])} vs {int(ref.argmax())}")
        return {"probs": d}


def check_data(description: dict, decode, report: dict) -> None:
    for split, samples in description["splits"].items():
        report["splits"][split] = {"images": len(samples), "readable": len(decode([p for p, _ in samples]))}


SPEC = TaskSpec(
    name="toy",
    head=ToyHead,
    predictor=ToyPredictor,
    predict_options=ToyPredictOptions,
    write_predictions=write_predictions,
    export=ToyExport(),
    check_data=check_data,
    export_options=ToyExportOptions,
)


class ToyTask(BaseTask):
    spec = SPEC

    def __init__(
        self, backbone, head, info, optimizer=None, scheduler=None, finetune=None, no_decay: Sequence[str] = ()
    ) -> None:
        super().__init__(info, optimizer, scheduler, finetune, no_decay)
        self.class_names = list(info["class_names"])
        self.model = ToyNet(backbone, head(in_channels=backbone.num_features, num_classes=len(self.class_names)))

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        images, labels = batch
        return {"loss": nn.functional.cross_entropy(self.model(images), labels)}

    def on_validation_epoch_start(self) -> None:
        self.val_hits = torch.zeros(2, len(self.class_names))  # right, seen; per true class

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        logits = self.model(images)
        self.log("val/loss", nn.functional.cross_entropy(logits, labels), batch_size=len(labels))
        right = (logits.argmax(1) == labels).float().cpu()
        self.val_hits[0].index_add_(0, labels.cpu(), right)
        self.val_hits[1].index_add_(0, labels.cpu(), torch.ones_like(right))

    def figures(self, stage: str, sample: tuple | None = None) -> list[TaskFigure]:
        if stage != "val":
            return []
        accuracy = (self.val_hits[0] / self.val_hits[1].clamp(min=1)).numpy()
        data = {"accuracy": accuracy, "names": self.class_names}
        return [TaskFigure(class_accuracy_figure, data, tag="val/class_accuracy", file="class_accuracy.png")]

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        self.log("test/acc", (self.model(images).argmax(1) == labels).float().mean(), batch_size=len(labels))

    def predict_step(self, batch, batch_idx: int = 0) -> torch.Tensor:
        return self.model(batch).softmax(1)
