"""Image classification: cross-entropy with label smoothing, top-1 / top-5 accuracy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from mbtasks.backbones.base import Backbone
from mbtasks.data.transforms import denormalize
from mbtasks.models.classifier import Classifier
from mbtasks.tasks import health
from mbtasks.tasks.base import BaseTask, TaskFigure
from mbtasks.tasks.classification import figures
from mbtasks.tasks.classification import health as classification_health
from mbtasks.tasks.classification.spec import SPEC


class ClassificationTask(BaseTask):
    """Backbone + classifier head trained with (label-smoothed) cross-entropy.

    Args:
        backbone: any :class:`Backbone` (its last feature map is classified).
        head: partial ``ClassifierHead`` completed with ``in_channels`` and ``num_classes``.
        info: data info; ``info["class_names"]`` fixes the number of classes.
        label_smoothing: cross-entropy label smoothing.
        top_k: the k of the top-k accuracy, logged as ``acc_top{k}``; left out when the data has
            no more than k classes (it would be 1.0 whatever the model does).
        log_images: images shown in the TensorBoard prediction grid (0 disables).
        training: ``optimizer``, ``scheduler``, ``finetune``, ``no_decay`` (see :class:`BaseTask`).
    """

    spec = SPEC
    monitor = "val/acc_top1"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: Backbone,
        head: Callable[..., nn.Module],
        info: dict,
        label_smoothing: float = 0.1,
        top_k: int = 5,
        log_images: int = 16,
        **training: Any,
    ) -> None:
        super().__init__(info, **training)
        self.class_names = list(info["class_names"])
        k = len(self.class_names)
        if k < 2:
            raise ValueError(f"classification needs at least 2 classes, the data has {k}: {self.class_names}")
        self.model = Classifier(backbone, head(in_channels=backbone.num_features, num_classes=k))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.top_k = int(top_k)
        metrics = {"acc_top1": MulticlassAccuracy(k, top_k=1, average="micro")}
        if 1 < self.top_k < k:
            metrics[f"acc_top{self.top_k}"] = MulticlassAccuracy(k, top_k=self.top_k, average="micro")
        metrics = MetricCollection(metrics)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_confmat = MulticlassConfusionMatrix(k)
        self.test_confmat = MulticlassConfusionMatrix(k)
        self.log_images = log_images
        self._sample = GridSample(log_images, k)
        self.test_split = "test"

    def model_step(self, batch):
        images, labels = batch
        logits = self(images)
        return logits, labels, self.criterion(logits, labels)

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        logits, labels, loss = self.model_step(batch)
        self.train_metrics.update(logits, labels)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=labels.numel())
        return {"loss": loss}

    def validation_step(self, batch, batch_idx: int) -> None:
        logits, labels, loss = self.model_step(batch)
        self.val_metrics.update(logits, labels)
        self.val_confmat.update(logits, labels)
        # sync_dist: under DDP the epoch loss is the mean over all ranks' images, not rank 0's.
        self.log("val/loss", loss, prog_bar=True, batch_size=labels.numel(), sync_dist=True)
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=labels.numel())
        if self.log_images and not self.trainer.sanity_checking:
            self._sample.add(batch[0], labels, logits.argmax(1))

    def on_validation_epoch_end(self) -> None:
        # compute() gathers over ranks under DDP, so every rank calls it; the health checks need it too.
        self.val_matrix = self.val_confmat.compute().cpu().numpy() if not self.trainer.sanity_checking else None
        if self.val_matrix is not None:
            self.set_health(classification_health.check(self.val_matrix, self.class_names, health.facts_of(self)))
        self.val_grid = self._sample.take() if len(self._sample) else None
        self.val_confmat.reset()
        self._sample.clear()

    def test_step(self, batch, batch_idx: int) -> None:
        logits, labels, loss = self.model_step(batch)
        self.test_metrics.update(logits, labels)
        self.test_confmat.update(logits, labels)
        self.log("test/loss", loss, batch_size=labels.numel(), sync_dist=True)
        self.log_dict(self.test_metrics, batch_size=labels.numel())

    def on_test_epoch_start(self) -> None:
        self.test_confmat.reset()

    def on_test_epoch_end(self) -> None:
        # compute() gathers over ranks under DDP: every rank calls it, rank 0 draws it
        self.test_matrix = self.test_confmat.compute().cpu().numpy()
        # the data module tests on its validation split when it has no test split: the figure says which
        self.test_split = str(getattr(getattr(self.trainer, "datamodule", None), "test_split", "test"))

    def figures(self, stage: str, sample: tuple | None = None) -> list[TaskFigure]:
        """``val``: the confusion matrix and the prediction grid (TensorBoard); ``test``: ``confusion_matrix.png``,
        the tested split's counts, and normalised per true class."""
        names = self.class_names
        if stage == "test":
            matrix = getattr(self, "test_matrix", None)
            if matrix is None:
                return []
            data = {"matrix": matrix, "names": names, "split": self.test_split}
            return [TaskFigure(figures.confusion_matrix, data, file="confusion_matrix.png")]
        out = []
        if getattr(self, "val_matrix", None) is not None:
            data = {"matrix": self.val_matrix, "names": names}
            out.append(TaskFigure(figures.confusion_counts, data, tag="val/confusion_matrix"))
        if getattr(self, "val_grid", None) is not None:
            images, labels, preds = self.val_grid
            images = denormalize(images.float(), self.info["mean"], self.info["std"])
            data = {"images": images, "labels": labels, "preds": preds, "names": names, "step": self.global_step}
            out.append(TaskFigure(figures.prediction_grid, data, tag="val/predictions"))
        return out

    def predict_step(self, batch, batch_idx: int = 0) -> torch.Tensor:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self(images).softmax(dim=1)


class GridSample:
    """Up to ``n`` validation images for the prediction grid, spread over the true classes.

    Validation sets are read in order, often sorted by class: the first batch alone can be all one
    class, and then a model that answers that class for everything looks perfect in the grid. Each
    class gets at most ``ceil(n / min(n, k))`` of the ``n`` places, in the order images arrive.
    """

    def __init__(self, n: int, num_classes: int) -> None:
        self.n = max(0, int(n))
        self.quota = -(-self.n // max(1, min(self.n, num_classes))) if self.n else 0
        self.clear()

    def clear(self) -> None:
        self.images: list[torch.Tensor] = []
        self.labels: list[int] = []
        self.preds: list[int] = []
        self.per_class: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor) -> None:
        """Keep the images of this batch whose class still has room (``labels`` / ``preds`` ``(B,)``)."""
        if len(self) >= self.n:
            return
        for i, (y, p) in enumerate(zip(labels.tolist(), preds.tolist(), strict=True)):
            if len(self) >= self.n:
                break
            if self.per_class.get(y, 0) < self.quota:
                self.per_class[y] = self.per_class.get(y, 0) + 1
                self.images.append(images[i].detach().cpu())
                self.labels.append(int(y))
                self.preds.append(int(p))

    def take(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images (N, 3, H, W), true labels (N,), predicted labels (N,))``, by true class."""
        order = sorted(range(len(self)), key=lambda i: self.labels[i])
        return (
            torch.stack([self.images[i] for i in order]),
            torch.tensor([self.labels[i] for i in order]),
            torch.tensor([self.preds[i] for i in order]),
        )
