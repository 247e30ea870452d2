"""FaceNet-style embeddings (Schroff et al. 2015, arXiv:1503.03832): a unit-length embedding
trained with a triplet loss and online semi-hard negative mining over P x K batches
(pytorch-metric-learning), evaluated by verification on held-out identities with the LFW
protocol and by open-set (1:N) identification against a gallery with strangers (DIR@FAR,
:mod:`mbtasks.metrics.open_set`); optionally ArcFace (Deng et al. 2019, arXiv:1801.07698)
instead of triplets, and distillation from a teacher's embeddings (MobileNet V1 paper, Sec. 4.7).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mbtasks.backbones.base import Backbone
from mbtasks.data.transforms import denormalize
from mbtasks.errors import ConfigError
from mbtasks.metrics.open_set import OpenSetResult, dir_key, evaluate_open_set, rates_at
from mbtasks.metrics.verification import VerificationMetric, VerificationResult, far_key
from mbtasks.models.embedding import EmbeddingNet, build_embedding_head
from mbtasks.tasks import health
from mbtasks.tasks.base import BaseTask, TaskFigure
from mbtasks.tasks.embedding import figures
from mbtasks.tasks.embedding import health as embedding_health
from mbtasks.tasks.embedding.distill import Distiller
from mbtasks.tasks.embedding.losses import (
    MARGIN_LOSSES,
    active_fraction,
    check_choices,
    metric_loss,
)
from mbtasks.tasks.embedding.spec import SPEC

log = logging.getLogger(__name__)


# gradient-norm clip of the margin losses unless trainer.gradient_clip_val is given
MARGIN_CLIP_NORM = 5.0


class EmbeddingTask(BaseTask):
    """Backbone + embedding head trained with a metric loss and/or distillation.

    Args:
        backbone: any :class:`Backbone` (its last feature map is embedded).
        head: partial ``EmbeddingHead`` completed by :func:`build_embedding_head`.
        info: data info (image size, mean/std, ``num_train_identities`` for ArcFace).
        loss: ``triplet`` (FaceNet), ``arcface``, ``cosface``, ``sphereface``, or ``none`` (distillation alone).
        margin: triplet margin (FaceNet: 0.2) on ``distance``.
        distance: ``squared_l2`` (FaceNet, and the verification distance) or ``l2``.
        miner: triplet mining: ``semihard`` (FaceNet: d(a,p) < d(a,n) < d(a,p) + margin),
            ``batch_hard`` (hardest positive and negative per anchor) or ``all`` (every
            triplet violating the margin).
        arcface_margin / arcface_scale: ArcFace's angular margin (degrees) and scale.
        cosface_margin / cosface_scale, sphereface_margin / sphereface_scale: CosFace's and
            SphereFace's margins and scales (``task.loss=cosface|sphereface``, :mod:`.losses`).
        teacher: distil from this mbtasks embedding checkpoint or timm model name.
        teacher_pretrained: for a timm teacher, load published weights (needs internet/cache).
        teacher_dim: the teacher's embedding size; ``None`` loads the teacher to read it (a fresh
            run; checkpoints store it, so a reload needs no teacher).
        distill_weight: weight of the distillation loss added to the metric loss.
        flip_tta: evaluate and predict with image + mirror image embeddings summed.
        fars: false accept rates at which to report TAR.
        open_set_far: the 1:N (open-set) threshold checkpoints store lets this fraction of strangers'
            queries through (given a gallery identity), measured on validation identities held out of
            the gallery (:mod:`mbtasks.metrics.open_set`).
        open_set_fars: false-alarm rates at which to report DIR (``val/dir_at_far_0.01`` ...).
        open_set_gallery_size: identities enrolled per trial of that protocol (capped at half the
            split's identities); the threshold holds for galleries of about this size.
        open_set_enrol: images enrolled per gallery identity (its other images are queries).
        open_set_trials: random gallery / unknown splits pooled.
        projector_identities / projector_images: the TensorBoard embedding projector shows
            this many test identities with up to this many images each (0 disables).
        training: ``optimizer``, ``scheduler``, ``finetune``, ``no_decay`` (see :class:`BaseTask`).
    """

    spec = SPEC
    monitor = "val/verification_acc"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: Backbone,
        head: Callable[..., nn.Module],
        info: dict,
        loss: str = "triplet",
        margin: float = 0.2,
        distance: str = "squared_l2",
        miner: str = "semihard",
        arcface_margin: float = 28.6,
        arcface_scale: float = 64.0,
        cosface_margin: float = 0.35,
        cosface_scale: float = 64.0,
        sphereface_margin: int = 4,
        sphereface_scale: float = 64.0,
        teacher: str | None = None,
        teacher_pretrained: bool = False,
        teacher_dim: int | None = None,
        distill_weight: float = 1.0,
        flip_tta: bool = True,
        fars: tuple[float, ...] = (1e-3, 1e-4),
        open_set_far: float = 0.01,
        open_set_fars: tuple[float, ...] = (0.01, 0.1),
        open_set_gallery_size: int = 20,
        open_set_enrol: int = 2,
        open_set_trials: int = 10,
        projector_identities: int = 10,
        projector_images: int = 8,
        **training: Any,
    ) -> None:
        super().__init__(info, **training)
        check_choices(loss, miner, distance)
        if loss == "none" and not teacher:
            raise ConfigError("task.loss=none trains by distillation alone and needs task.teacher=CKPT_OR_TIMM_NAME")
        self.model = EmbeddingNet(backbone, build_embedding_head(head, backbone, int(self.info.get("image_size", 224))))
        self.loss_name, self.margin, self.miner_name = loss, float(margin), miner
        self.metric_loss, self.miner = metric_loss(
            loss,
            self.model.dim,
            float(margin),
            distance,
            miner,
            int(self.info.get("num_train_identities", 0)),
            arcface_margin,
            arcface_scale,
            cosface_margin,
            cosface_scale,
            sphereface_margin,
            sphereface_scale,
        )
        self.distill_weight = float(distill_weight)
        self.distill = (
            Distiller(teacher, self.model.dim, teacher_dim, self.info["mean"], self.info["std"], teacher_pretrained)
            if teacher
            else None
        )
        self.flip_tta = flip_tta
        self.fars = tuple(float(f) for f in fars)
        for key, value in (("open_set_far", open_set_far), *(("open_set_fars", f) for f in open_set_fars)):
            if not 0 < float(value) < 1:
                raise ConfigError(f"task.{key}={value}: expected a false-alarm rate in (0, 1), e.g. 0.01")
        for key, value in (
            ("open_set_gallery_size", open_set_gallery_size),
            ("open_set_enrol", open_set_enrol),
            ("open_set_trials", open_set_trials),
        ):
            if int(value) < 1:
                raise ConfigError(f"task.{key}={value}: expected a whole number >= 1")
        self.open_set_far, self.open_set_fars = float(open_set_far), tuple(float(f) for f in open_set_fars)
        self.open_set_gallery_size, self.open_set_enrol = int(open_set_gallery_size), int(open_set_enrol)
        self.open_set_trials = int(open_set_trials)
        self.projector_identities, self.projector_images = projector_identities, projector_images
        # The verification threshold chosen on validation pairs; checkpoints carry it to predict.
        self.register_buffer("threshold", torch.tensor(1.0))
        # The 1:N threshold (nearest gallery identity accepted at most this far) chosen on validation
        # identities for task.open_set_far, and the gallery size it was chosen at. -1: not chosen (a
        # checkpoint written before it existed: predict falls back to the verification threshold; not
        # NaN, which checkpoint readers refuse as a diverged run).
        self.register_buffer("open_set_threshold", torch.tensor(-1.0))
        self.register_buffer("open_set_gallery", torch.tensor(0))
        self._eval_embeddings: dict[int, torch.Tensor] = {}
        self.eval_store = VerificationMetric()  # gathers every rank's embeddings under DDP
        self._thumbnails: dict[int, torch.Tensor] = {}
        self._projector_indices: set[int] = set()
        self._noted: set[str] = set()
        self.evaluated: dict[str, VerificationResult] = {}  # the last evaluation's, per split, for the figures

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Inference embeddings ``(N, D)``, with flip test-time augmentation when configured."""
        return self.model.embed(images, flip=self.flip_tta)

    def _pair_set(self, split: str):
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "pair_set"):
            raise RuntimeError(
                "the embedding task evaluates on verification pairs: pass a FacesDataModule "
                "(mbtasks.data.faces) as the trainer's datamodule"
            )
        return datamodule.pair_set(split)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before the 1:N threshold existed load with it unset (-1)
        for name in ("open_set_threshold", "open_set_gallery"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def task_args(self) -> dict:
        return {"teacher_dim": self.distill.teacher_dim} if self.distill is not None else {}

    # ---------------------------------------------------------------- training
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Scale-64 margin logits give gradient norms in the thousands at the task's SGD rate: the
        # embeddings overflow to NaN within two steps. insightface's arcface_torch clips the norm at 5.
        if gradient_clip_val is None and self.loss_name in MARGIN_LOSSES:
            gradient_clip_val, gradient_clip_algorithm = MARGIN_CLIP_NORM, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_fit_start(self) -> None:
        if self.distill is not None:
            self.distill.teacher  # noqa: B018 - load it now, not inside the first step

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        images, labels = batch
        emb = self.model(images)
        n = labels.numel()
        terms: dict[str, torch.Tensor] = {}
        if self.metric_loss is not None:
            if self.miner is not None:
                mined = self.miner(emb, labels)
                terms["metric_loss"] = self.metric_loss(emb, labels, mined)
                self.log("train/mined_triplets", float(len(mined[0])), batch_size=n)
                self.log(
                    "train/active_triplets",
                    active_fraction(self.metric_loss, emb.detach(), labels, self.margin),
                    batch_size=n,
                )
            else:
                terms["metric_loss"] = self.metric_loss(emb, labels)
        if self.distill is not None:
            terms["distill_loss"] = self.distill(emb, images)
        total = terms.get("metric_loss", 0.0) + self.distill_weight * terms.get("distill_loss", 0.0)
        return {"loss": total, **terms}

    # -------------------------------------------------------------- evaluation
    def _eval_start(self, split: str) -> None:
        self.eval_store.reset()
        self._eval_embeddings, self._thumbnails = {}, {}
        self._projector_indices = set()
        self.evaluated.pop(split, None)
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
        verified = self.eval_store.verify(pair_set, self.fars, self._eval_embeddings)
        if verified is None:
            log.warning("%s: fewer than 2 pairs with embeddings, verification skipped", split)
            return None
        if verified.dropped:
            log.warning(
                "%s: %d of %d pairs dropped (images unreadable or not evaluated)",
                split,
                verified.dropped,
                len(pair_set.pairs),
            )
        for note in verified.result.notes + pair_set.notes:
            if f"{split}: {note}" not in self._noted:  # once per run, not every epoch
                self._noted.add(f"{split}: {note}")
                log.info("%s verification: %s", split, note)
        return verified.result, verified.distances, verified.same

    def _open_set(self, split: str) -> OpenSetResult | None:
        """The open-set protocol on this epoch's embeddings of ``split``'s labelled images."""
        pair_set = self._pair_set(split)
        if not self._eval_embeddings:
            return None
        idx = sorted(self._eval_embeddings)
        result = evaluate_open_set(
            torch.stack([self._eval_embeddings[i] for i in idx]).numpy(),
            np.asarray(pair_set.labels)[idx],
            self.open_set_far,
            self.open_set_fars,
            self.open_set_gallery_size,
            self.open_set_enrol,
            self.open_set_trials,
        )
        if result is None:
            return None
        for note in result.notes:
            if f"{split}: {note}" not in self._noted:
                self._noted.add(f"{split}: {note}")
                log.info("%s open-set identification: %s", split, note)
        for far, value in result.dir_at_far.items():
            self.log(f"{split}/{dir_key(far)}", float("nan") if value is None else float(value))
        self.log(f"{split}/identification_rank1", result.rank1)
        return result

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
        self.evaluated[split] = result
        tb = self.tensorboard
        if tb is not None and result.notes:
            tb.add_text(f"{split}/notes", "\n\n".join(result.notes), self.global_step)

    def on_validation_epoch_start(self) -> None:
        self._eval_start("val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        evaluated = self._evaluate("val")
        open_set = self._open_set("val")
        if open_set is not None:
            self.open_set_threshold.fill_(open_set.threshold)
            self.open_set_gallery.fill_(open_set.gallery_size)
            self.log("val/open_set_threshold", open_set.threshold)
            self.log("val/open_set_far", open_set.far)
        if evaluated is not None:
            result, distances, same = evaluated
            self.threshold.fill_(result.threshold)
            self._log_result("val", result, result.threshold)
            self.set_health(
                embedding_health.check(distances, same, result.threshold, result.roc_auc, health.facts_of(self))
            )

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
        open_set = self._open_set("test")
        if open_set is not None and float(self.open_set_threshold) >= 0:
            # the stored (validation-chosen) 1:N threshold on the test identities: what predict gives
            stored = float(self.open_set_threshold)
            dir_, far = rates_at(stored, open_set.known_distance, open_set.known_correct, open_set.unknown_distance)
            self.log("test/open_set_threshold", stored)
            self.log("test/open_set_far", far)
            self.log("test/dir_at_threshold", dir_)
        self._log_projector("test", self._pair_set("test"))

    def _log_projector(self, split: str, pair_set) -> None:
        tb = self.tensorboard
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

    def figures(self, stage: str, sample: tuple | None = None) -> list[TaskFigure]:
        """The protocol's ROC of the split (TensorBoard ``val/roc``, ``test/roc``); after testing also ``roc.png``
        (the stored threshold and TAR@FAR marked) and ``distances.png`` of the test pairs."""
        result = self.evaluated.get(stage)
        if result is None:
            return []
        out = [
            TaskFigure(
                figures.roc, {"result": result, "title": f"{stage} ROC (step {self.global_step})"}, tag=f"{stage}/roc"
            )
        ]
        if stage == "test" and getattr(self, "test_pairs", None) is not None:
            result, distances, same = self.test_pairs
            data = {"distances": np.asarray(distances), "same": np.asarray(same), "threshold": float(self.threshold)}
            out.append(TaskFigure(figures.roc_at_threshold, {"result": result, **data}, file="roc.png"))
            out.append(TaskFigure(figures.distance_histogram, data, file="distances.png"))
        return out

    # ---------------------------------------------------------------- predict
    def predict_step(self, batch, batch_idx: int = 0) -> torch.Tensor:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self.embed(images)
