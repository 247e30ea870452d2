"""FaceNet-style embeddings (Schroff et al. 2015, arXiv:1503.03832): a unit-length embedding
trained with a triplet loss and online semi-hard negative mining over P x K batches
(pytorch-metric-learning), evaluated by verification on held-out identities with the LFW
protocol; optionally ArcFace (Deng et al. 2019, arXiv:1801.07698) instead of triplets, and
distillation from a teacher's embeddings (MobileNet V1 paper, Sec. 4.7).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from mbtasks.backbones.base import Backbone
from mbtasks.config import suggest
from mbtasks.data.transforms import denormalize
from mbtasks.errors import ConfigError
from mbtasks.heads.embedding import EmbeddingHead, EmbeddingNet
from mbtasks.metrics.verification import (
    EmbeddingStore,
    VerificationResult,
    evaluate_verification,
    far_key,
    pair_distances,
    roc_figure,
)
from mbtasks.tasks.base import BaseTask
from mbtasks.tasks.distillation import DistillationLoss, Teacher, load_teacher

log = logging.getLogger(__name__)

LOSSES = ("triplet", "arcface", "none")
MINERS = ("semihard", "batch_hard", "all")
# the triplet loss's distance: FaceNet's margin is on the squared L2 distance of unit embeddings
DISTANCES = {"squared_l2": 2, "l2": 1}
# anchors used to estimate the fraction of active triplets (the count grows as N^3)
_ACTIVE_ANCHORS = 128


class EmbeddingTask(BaseTask):
    """Backbone + embedding head trained with a metric loss and/or distillation.

    Args:
        backbone: any :class:`Backbone` (its last feature map is embedded).
        head: partial ``EmbeddingHead`` completed with ``in_channels``.
        info: data info (image size, mean/std, ``num_train_identities`` for ArcFace).
        loss: ``triplet`` (FaceNet), ``arcface``, or ``none`` (distillation alone).
        margin: triplet margin (FaceNet: 0.2) on ``distance``.
        distance: ``squared_l2`` (FaceNet, and the verification distance) or ``l2``.
        miner: triplet mining: ``semihard`` (FaceNet: d(a,p) < d(a,n) < d(a,p) + margin),
            ``batch_hard`` (hardest positive and negative per anchor) or ``all`` (every
            triplet violating the margin).
        arcface_margin / arcface_scale: ArcFace's angular margin (degrees) and scale.
        teacher: distil from this mbtasks embedding checkpoint or timm model name.
        teacher_pretrained: for a timm teacher, load published weights (needs internet/cache).
        distill_weight: weight of the distillation loss added to the metric loss.
        flip_tta: evaluate and predict with image + mirror image embeddings summed.
        fars: false accept rates at which to report TAR.
        projector_identities / projector_images: the TensorBoard embedding projector shows
            this many test identities with up to this many images each (0 disables).
    """

    name = "embedding"
    head_class = EmbeddingHead
    monitor = "val/verification_acc"
    monitor_mode = "max"
    # int8 in the head's fully connected (Gemm) layers cost ORL 0.034 verification accuracy, float
    # 0.001, at no speed cost (1.56x vs 1.64x the fp32 graph; README "INT8")
    int8_keep_float = ("Gemm",)

    def __init__(
        self,
        backbone: Backbone,
        head: Callable[..., nn.Module],
        info: dict,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        loss: str = "triplet",
        margin: float = 0.2,
        distance: str = "squared_l2",
        miner: str = "semihard",
        arcface_margin: float = 28.6,
        arcface_scale: float = 64.0,
        teacher: str | None = None,
        teacher_pretrained: bool = False,
        distill_weight: float = 1.0,
        flip_tta: bool = True,
        fars: tuple[float, ...] = (1e-3, 1e-4),
        projector_identities: int = 10,
        projector_images: int = 8,
    ) -> None:
        super().__init__(info, optimizer, scheduler)
        if loss not in LOSSES:
            raise ConfigError(f"task.loss={loss!r}: expected one of {list(LOSSES)}.{suggest(loss, LOSSES)}")
        if miner not in MINERS:
            raise ConfigError(f"task.miner={miner!r}: expected one of {list(MINERS)}.{suggest(miner, MINERS)}")
        if distance not in DISTANCES:
            raise ConfigError(f"task.distance={distance!r}: expected one of {list(DISTANCES)}.{suggest(distance, DISTANCES)}")
        if loss == "none" and not teacher:
            raise ConfigError("task.loss=none trains by distillation alone and needs task.teacher=CKPT_OR_TIMM_NAME")
        self.model = EmbeddingNet(backbone, head(in_channels=backbone.num_features))
        dim = self.model.dim
        self.loss_name, self.margin, self.miner_name = loss, float(margin), miner
        self.miner = None
        if loss == "triplet":
            dist = LpDistance(normalize_embeddings=True, p=2, power=DISTANCES[distance])
            self.metric_loss = losses.TripletMarginLoss(margin=margin, distance=dist)
            self.miner = (miners.BatchHardMiner(distance=dist) if miner == "batch_hard"
                          else miners.TripletMarginMiner(margin=margin, type_of_triplets=miner, distance=dist))
        elif loss == "arcface":
            classes = int(self.info.get("num_train_identities", 0))
            if classes < 2:
                raise ConfigError(f"task.loss=arcface needs the number of training identities in the data info, got {classes}")
            self.metric_loss = losses.ArcFaceLoss(classes, dim, margin=arcface_margin, scale=arcface_scale)
        else:
            self.metric_loss = None
        # The teacher stays out of the module tree: not trained, not saved, not counted.
        self.teacher_spec, self.teacher_pretrained = teacher, teacher_pretrained
        self.__dict__["_teacher"] = None
        self.distill_weight = float(distill_weight)
        self.distill = None
        if teacher:
            teacher_dim = self.info.get("teacher_dim")
            if teacher_dim is None:  # a fresh run: load now to size the projection
                self._load_teacher()
                teacher_dim = self._teacher.dim
                self.info["teacher_dim"] = teacher_dim
            self.distill = DistillationLoss(dim, int(teacher_dim))
        self.flip_tta = flip_tta
        self.fars = tuple(float(f) for f in fars)
        self.projector_identities, self.projector_images = projector_identities, projector_images
        # The verification threshold chosen on validation pairs; checkpoints carry it to predict.
        self.register_buffer("threshold", torch.tensor(1.0))
        self._eval_embeddings: dict[int, torch.Tensor] = {}
        self.eval_store = EmbeddingStore()  # gathers every rank's embeddings under DDP
        self._thumbnails: dict[int, torch.Tensor] = {}
        self._projector_indices: set[int] = set()
        self._noted: set[str] = set()

    # ----------------------------------------------------------------- helpers
    def _load_teacher(self) -> Teacher:
        teacher = load_teacher(self.teacher_spec, self.info["mean"], self.info["std"], self.teacher_pretrained)
        self.__dict__["_teacher"] = teacher
        log.info("distilling from %s (%d-d embeddings)", teacher.name, teacher.dim)
        return teacher

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Inference embeddings ``(N, D)``, with flip test-time augmentation when configured."""
        return self.model.embed(images, flip=self.flip_tta)

    def _tensorboard(self):
        from torch.utils.tensorboard import SummaryWriter

        for logger in self.loggers:
            if isinstance(getattr(logger, "experiment", None), SummaryWriter):
                return logger.experiment
        return None

    def _pair_set(self, split: str):
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "pair_set"):
            raise RuntimeError("the embedding task evaluates on verification pairs: pass a FacesDataModule "
                               "(mbtasks.data.faces) as the trainer's datamodule")
        return datamodule.pair_set(split)

    # ---------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        if self.teacher_spec and self._teacher is None:  # rebuilt from a checkpoint: load lazily
            self._load_teacher()

    @torch.no_grad()
    def _active_fraction(self, emb: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of all valid triplets that violate the margin (have a non-zero loss)."""
        m = min(len(labels), _ACTIVE_ANCHORS)
        a, p, n = lmu.get_all_triplets_indices(labels[:m], labels)
        a, p, n = (t[a != p] for t in (a, p, n))  # with a reference set, an anchor is its own "positive"
        if len(a) == 0:
            return 0.0
        dist = self.metric_loss.distance(emb[:m], emb)
        return float((dist[a, n] - dist[a, p] < self.margin).float().mean())

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        emb = self.model(images)
        n = labels.numel()
        terms: dict[str, torch.Tensor] = {}
        if self.metric_loss is not None:
            if self.miner is not None:
                mined = self.miner(emb, labels)
                terms["metric_loss"] = self.metric_loss(emb, labels, mined)
                self.log("train/mined_triplets", float(len(mined[0])), batch_size=n)
                self.log("train/active_triplets", self._active_fraction(emb.detach(), labels), batch_size=n)
            else:
                terms["metric_loss"] = self.metric_loss(emb, labels)
        if self.distill is not None:
            teacher = self._teacher if self._teacher is not None else self._load_teacher()
            terms["distill_loss"] = self.distill(emb, teacher.to(images.device)(images))
        total = terms.get("metric_loss", 0.0) + self.distill_weight * terms.get("distill_loss", 0.0)
        self.check_finite({"loss": total, **terms})
        for key, value in terms.items():
            self.log(f"train/{key}", value, batch_size=n, prog_bar=key == "distill_loss")
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        return total

    # -------------------------------------------------------------- evaluation
    def _eval_start(self, split: str) -> None:
        self.eval_store.reset()
        self._eval_embeddings, self._thumbnails = {}, {}
        self._projector_indices = set()
        if split == "test" and self.projector_identities > 0:
            pair_set = self._pair_set(split)
            by_identity: dict[int, list[int]] = {}
            for i, label in enumerate(pair_set.labels):
                by_identity.setdefault(label, []).append(i)
            shown = [v for v in by_identity.values() if len(v) >= 2][: self.projector_identities]
            self._projector_indices = {i for v in shown for i in v[: self.projector_images]}

    def _eval_step(self, batch) -> None:
        images, index, ok = batch
        self.eval_store.update(index, self.embed(images), ok)
        for i, good, img in zip(index.tolist(), ok.tolist(), images, strict=True):
            if good and i in self._projector_indices:
                small = torch.nn.functional.interpolate(img[None].float(), size=(32, 32), mode="bilinear")
                self._thumbnails[i] = denormalize(small[0], self.info["mean"], self.info["std"]).cpu()

    def _evaluate(self, split: str) -> tuple[VerificationResult, np.ndarray, np.ndarray] | None:
        """The protocol on this epoch's embeddings: ``(result, pair distances, same)`` or None."""
        pair_set = self._pair_set(split)
        self._eval_embeddings = self.eval_store.compute() if self.eval_store.update_called else {}
        if not self._eval_embeddings:
            log.warning("%s: no embeddings computed, verification skipped", split)
            return None
        dim = next(iter(self._eval_embeddings.values())).numel()
        emb = torch.zeros(len(pair_set.images), dim)
        have = torch.zeros(len(pair_set.images), dtype=torch.bool)
        for i, e in self._eval_embeddings.items():
            emb[i], have[i] = e, True
        pairs = pair_set.pairs
        keep = (have[pairs[:, 0]] & have[pairs[:, 1]]).numpy()
        if not keep.all():
            log.warning("%s: %d of %d pairs dropped (images unreadable or not evaluated)", split,
                        int((~keep).sum()), len(keep))
        if keep.sum() < 2:
            log.warning("%s: fewer than 2 pairs with embeddings, verification skipped", split)
            return None
        distances, same = pair_distances(emb, pairs[keep]), pair_set.same[keep]
        result = evaluate_verification(distances, same, pair_set.folds[keep], pair_set.num_folds, self.fars)
        for note in result.notes + pair_set.notes:
            if f"{split}: {note}" not in self._noted:  # once per run, not every epoch
                self._noted.add(f"{split}: {note}")
                log.info("%s verification: %s", split, note)
        return result, distances, same

    def _log_result(self, split: str, result: VerificationResult, threshold: float) -> None:
        metrics = {
            "verification_acc": result.accuracy,
            "verification_acc_std": result.accuracy_std,
            "roc_auc": result.roc_auc,
            "threshold": threshold,
            "num_pairs": float(result.num_same + result.num_different),
        }
        for far, tar in result.tar_at_far.items():
            metrics[far_key(far)] = float("nan") if tar is None else tar
        for key, value in metrics.items():
            self.log(f"{split}/{key}", float(value), prog_bar=key == "verification_acc")
        tb = self._tensorboard()
        if tb is not None:
            import matplotlib.pyplot as plt

            fig = roc_figure(result, f"{split} ROC (step {self.global_step})")
            tb.add_figure(f"{split}/roc", fig, self.global_step)
            plt.close(fig)
            if result.notes:
                tb.add_text(f"{split}/notes", "\n\n".join(result.notes), self.global_step)

    def on_validation_epoch_start(self) -> None:
        self._eval_start("val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        evaluated = self._evaluate("val")
        if evaluated is not None:
            result = evaluated[0]
            self.threshold.fill_(result.threshold)
            self._log_result("val", result, result.threshold)

    def on_test_epoch_start(self) -> None:
        self._eval_start("test")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        evaluated = self._evaluate("test")
        if evaluated is None:
            return
        result, distances, same = evaluated
        self.test_pairs = (result, distances, same)  # for the run-dir plots (ROC, distance histograms)
        # test/threshold is the stored (validation-chosen) threshold that predict applies, and
        # test/accuracy_at_threshold its accuracy here; the protocol picks its own per fold.
        threshold = float(self.threshold)
        self._log_result("test", result, threshold)
        self.log("test/accuracy_at_threshold", float(np.mean((distances <= threshold) == same)))
        self.log("test/protocol_threshold", float(np.mean(result.fold_thresholds)))
        self._log_projector("test", self._pair_set("test"))

    def _log_projector(self, split: str, pair_set) -> None:
        tb = self._tensorboard()
        if tb is None or not self._thumbnails:
            return
        idx = sorted(self._thumbnails)
        tb.add_embedding(
            torch.stack([self._eval_embeddings[i] for i in idx]),
            metadata=[pair_set.identities[pair_set.labels[i]] for i in idx],
            label_img=torch.stack([self._thumbnails[i] for i in idx]),
            global_step=self.global_step,
            tag=f"{split}/embeddings",
        )

    # ---------------------------------------------------------------- predict
    def predict_step(self, batch, batch_idx: int = 0) -> torch.Tensor:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self.embed(images)

    @classmethod
    def profile_info(cls, cfg) -> dict:
        """Data info for counting the network (``profile.num_classes`` identities for ArcFace)."""
        return {"image_size": int(cfg.data.image_size), "mean": list(cfg.data.mean), "std": list(cfg.data.std),
                "num_train_identities": int(cfg.profile.num_classes)}
