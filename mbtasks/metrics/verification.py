"""Face verification metrics with the LFW protocol (Huang et al. 2007, View 2; as used by
FaceNet, Schroff et al. 2015, arXiv:1503.03832, Sec. 5).

A pair is declared "same identity" when the squared L2 distance of its two unit-length
embeddings is at most a threshold. The protocol is 10-fold cross-validation: on each
fold the threshold that maximises accuracy on the other nine folds is applied, and the
mean +- std of the ten fold accuracies is reported. ROC AUC and TAR at a given FAR use
the ROC of all pairs (scikit-learn). A TAR at FAR = f is only measured when there are at
least 1/f different-identity pairs; otherwise it is ``None`` and a note says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


@dataclass
class VerificationResult:
    """Outcome of the protocol on one pair set.

    Attributes:
        accuracy / accuracy_std: mean and std of the per-fold accuracies.
        fold_accuracies / fold_thresholds: per fold, the accuracy and the threshold
            (picked on the other folds) it was scored with.
        threshold: the accuracy-maximising threshold over all pairs (the one to deploy).
        roc_auc: area under the ROC (NaN when one kind of pair is missing).
        tar_at_far: ``{far: TAR or None}`` (None: too few different-identity pairs).
        fpr / tpr: the ROC, for plotting.
        num_same / num_different: pair counts.
        notes: what could not be measured and why.
    """

    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    threshold: float
    roc_auc: float
    tar_at_far: dict[float, float | None]
    fpr: np.ndarray
    tpr: np.ndarray
    num_same: int
    num_different: int
    notes: list[str] = field(default_factory=list)


def pair_distances(embeddings: torch.Tensor | np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Squared L2 distances of the pairs.

    Args:
        embeddings: ``(N, D)`` embeddings (unit length: distances lie in [0, 4]).
        pairs: ``(M, 2)`` indices into ``embeddings``.

    Returns:
        ``(M,)`` float64 distances.
    """
    emb = torch.as_tensor(embeddings, dtype=torch.float64)
    idx = torch.as_tensor(np.asarray(pairs, dtype=np.int64))
    return (emb[idx[:, 0]] - emb[idx[:, 1]]).pow(2).sum(1).numpy()


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The distance threshold with the highest accuracy (``same`` iff ``distance <= threshold``).

    The threshold sits halfway between the last accepted and the first rejected
    distance, so it generalises to new pairs.

    Returns:
        ``(threshold, accuracy)`` on these pairs.
    """
    d = np.asarray(distances, np.float64)
    y = np.asarray(same, bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:  # one kind only: accept all or nothing
        return (float(d.max()) + 1e-6, 1.0) if neg == 0 else (float(d.min()) - 1e-6, 1.0)
    fpr, tpr, scores = roc_curve(y, -d, drop_intermediate=False)
    acc = (tpr * pos + (1 - fpr) * neg) / (pos + neg)
    i = int(np.argmax(acc))
    if not np.isfinite(scores[i]):  # reject everything
        return float(d.min()) - 1e-6, float(acc[i])
    accepted = -float(scores[i])
    above = d[d > accepted]
    return (accepted + float(above.min())) / 2 if len(above) else accepted + 1e-6, float(acc[i])


def tar_at_far(distances: np.ndarray, same: np.ndarray, far: float) -> float | None:
    """True accept rate at a false accept rate <= ``far``; None below ``1/far`` different pairs."""
    y = np.asarray(same, bool)
    if (~y).sum() < math.ceil(1 / far) or y.sum() == 0:
        return None
    fpr, tpr, _ = roc_curve(y, -np.asarray(distances, np.float64))
    return float(tpr[fpr <= far].max())


def evaluate_verification(
    distances: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray | None = None,
    num_folds: int = 10,
    fars: tuple[float, ...] = (1e-3, 1e-4),
) -> VerificationResult:
    """The LFW protocol on precomputed pair distances.

    Args:
        distances: ``(M,)`` pair distances (smaller = more alike).
        same: ``(M,)`` bool ground truth.
        folds: ``(M,)`` fold of each pair (a pairs file's structure); default: ``num_folds``
            consecutive blocks (scikit-learn ``KFold`` without shuffling).
        num_folds: folds when ``folds`` is not given.
        fars: false accept rates at which to report the true accept rate.

    Returns:
        a :class:`VerificationResult`.
    """
    d = np.asarray(distances, np.float64)
    y = np.asarray(same, bool)
    if len(d) != len(y) or len(d) < 2:
        raise ValueError(f"need >= 2 pairs with one label each, got {len(d)} distances and {len(y)} labels")
    if folds is None:
        folds = np.zeros(len(d), int)
        for f, (_, test) in enumerate(KFold(n_splits=min(num_folds, len(d))).split(d)):
            folds[test] = f
    folds = np.asarray(folds)
    fold_acc, fold_thr = [], []
    for f in np.unique(folds):
        test = folds == f
        thr, _ = best_threshold(d[~test], y[~test]) if (~test).any() else best_threshold(d, y)
        fold_thr.append(thr)
        fold_acc.append(float(np.mean((d[test] <= thr) == y[test])))
    threshold, _ = best_threshold(d, y)
    both = 0 < y.sum() < len(y)
    notes = []
    if both:
        auc = float(roc_auc_score(y, -d))
        fpr, tpr, _ = roc_curve(y, -d)
    else:
        auc, fpr, tpr = float("nan"), np.zeros(0), np.zeros(0)
        notes.append("ROC AUC not measured: the pairs are all of one kind")
    tars = {}
    for far in fars:
        tars[far] = tar_at_far(d, y, far)
        if tars[far] is None:
            notes.append(
                f"TAR@FAR={far:g} not measured: {int((~y).sum())} different-identity pairs, "
                f"needs >= {math.ceil(1 / far)}"
            )
    return VerificationResult(
        accuracy=float(np.mean(fold_acc)),
        accuracy_std=float(np.std(fold_acc)),
        fold_accuracies=fold_acc,
        fold_thresholds=fold_thr,
        threshold=threshold,
        roc_auc=auc,
        tar_at_far=tars,
        fpr=fpr,
        tpr=tpr,
        num_same=int(y.sum()),
        num_different=int((~y).sum()),
        notes=notes,
    )


def far_key(far: float) -> str:
    """``1e-3 -> "tar_at_far_1e-3"`` (the metric name)."""
    mantissa, exponent = f"{far:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"tar_at_far_{mantissa}e{int(exponent)}"


class EmbeddingStore(Metric):
    """The evaluation embeddings of one epoch, by dataset index.

    Under DDP every rank embeds its share of the images; ``compute()`` gathers the states
    of all ranks first (torchmetrics' ``cat`` reduction), so the protocol runs on every
    image's embedding, as in one process. Duplicates from the distributed sampler's
    padding carry the same index and the same embedding.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("ok", default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, embeddings: torch.Tensor, ok: torch.Tensor) -> None:
        """``index`` ``(B,)`` dataset indices, ``embeddings`` ``(B, D)``, ``ok`` ``(B,)``: image was readable."""
        self.index.append(index.long())
        self.embeddings.append(embeddings.float())
        self.ok.append(ok.bool())

    def compute(self) -> dict[int, torch.Tensor]:
        """``{dataset index: embedding}`` of the readable images (CPU)."""
        if isinstance(self.index, list) and not self.index:  # after a DDP sync the states are tensors
            return {}
        index, emb, ok = (dim_zero_cat(s).cpu() for s in (self.index, self.embeddings, self.ok))
        return {int(i): e for i, e, good in zip(index.tolist(), emb, ok.tolist(), strict=True) if good}


@dataclass
class PairVerification:
    """What :meth:`VerificationMetric.verify` returns: the protocol's result, and each kept pair's
    distance and same/different label (for plots and the accuracy at a stored threshold)."""

    result: VerificationResult
    distances: np.ndarray
    same: np.ndarray
    dropped: int


class VerificationMetric(EmbeddingStore):
    """The embedding store plus the verification protocol on a pair set.

    ``update`` collects ``(index, embeddings, ok)`` batches (gathered over DDP ranks by
    :class:`EmbeddingStore`); :meth:`verify` runs :func:`evaluate_verification` on the pairs of
    ``pair_set`` whose two images both have an embedding. The task evaluates its validation and
    test splits with it; ``export.quantize=int8`` scores an exported graph with it.
    """

    def verify(
        self, pair_set, fars: tuple[float, ...] = (1e-3,), embeddings: dict[int, torch.Tensor] | None = None
    ) -> PairVerification | None:
        """``None`` when fewer than 2 pairs have both embeddings. ``embeddings``: what :meth:`compute`
        returned, when the caller needs them too (computing gathers over DDP ranks: once is enough)."""
        if embeddings is None:
            embeddings = self.compute() if self.update_called else {}
        if not embeddings:
            return None
        dim = next(iter(embeddings.values())).numel()
        table = torch.zeros(len(pair_set.images), dim)
        have = torch.zeros(len(pair_set.images), dtype=torch.bool)
        for i, e in embeddings.items():
            table[i], have[i] = e, True
        pairs = pair_set.pairs
        keep = (have[pairs[:, 0]] & have[pairs[:, 1]]).numpy()
        if keep.sum() < 2:
            return None
        distances, same = pair_distances(table, pairs[keep]), pair_set.same[keep]
        result = evaluate_verification(distances, same, pair_set.folds[keep], pair_set.num_folds, tuple(fars))
        return PairVerification(result, distances, same, int((~keep).sum()))
