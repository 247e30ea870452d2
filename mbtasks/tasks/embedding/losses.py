"""The metric losses and triplet miners of the embedding task (pytorch-metric-learning).

- triplet: FaceNet (Schroff et al. 2015, arXiv:1503.03832), with online mining;
- margin softmax over the training identities, on unit embeddings and unit class centres:
  ArcFace (Deng et al. 2019, arXiv:1801.07698): ``s cos(theta + m)``, ``m`` in degrees;
  CosFace (Wang et al. 2018, arXiv:1801.09414): ``s (cos(theta) - m)``;
  SphereFace (Liu et al. 2017, arXiv:1704.08063): ``s psi(m theta)``, ``m`` a whole number (the
  paper's A-Softmax, with the embedding's norm, 1 here, times ``s`` as the logit scale).
"""

from __future__ import annotations

import math

import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from mbtasks.errors import ConfigError, suggest

LOSSES = ("triplet", "arcface", "cosface", "sphereface", "none")
# the margin-softmax losses: (pml class, what the margin is, its valid range as text)
MARGIN_LOSSES = {
    "arcface": (losses.ArcFaceLoss, "an angle in degrees", "0 <= m < 90 (the paper: 28.6, i.e. 0.5 rad)"),
    "cosface": (losses.CosFaceLoss, "a cosine offset", "0 <= m <= 1 (the paper: 0.35)"),
    "sphereface": (losses.SphereFaceLoss, "an angle multiplier", "a whole number >= 1 (the paper: 4)"),
}
MINERS = ("semihard", "batch_hard", "all")
# the triplet loss's distance: FaceNet's margin is on the squared L2 distance of unit embeddings
DISTANCES = {"squared_l2": 2, "l2": 1}
# anchors used to estimate the fraction of active triplets (the count grows as N^3)
_ACTIVE_ANCHORS = 128


def check_choices(loss: str, miner: str, distance: str) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"task.loss={loss!r}: expected one of {list(LOSSES)}.{suggest(loss, LOSSES)}")
    if miner not in MINERS:
        raise ConfigError(f"task.miner={miner!r}: expected one of {list(MINERS)}.{suggest(miner, MINERS)}")
    if distance not in DISTANCES:
        raise ConfigError(
            f"task.distance={distance!r}: expected one of {list(DISTANCES)}.{suggest(distance, DISTANCES)}"
        )


def _margin_ok(loss: str, margin) -> bool:
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin):
        return False
    if loss == "arcface":
        return 0 <= margin < 90
    if loss == "cosface":
        return 0 <= margin <= 1
    return float(margin).is_integer() and margin >= 1  # pml would truncate 2.5 to 2 silently


def check_margin(loss: str, margin, scale) -> None:
    """Raise naming ``task.<loss>_margin`` / ``task.<loss>_scale`` when the value cannot work."""
    _, what, valid = MARGIN_LOSSES[loss]
    if not _margin_ok(loss, margin):
        raise ConfigError(f"task.{loss}_margin={margin!r}: {loss}'s margin is {what}; expected {valid}")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise ConfigError(
            f"task.{loss}_scale={scale!r}: expected a number > 0, the logit scale s on unit embeddings (e.g. 64)"
        )


def metric_loss(
    loss: str,
    dim: int,
    margin: float,
    distance: str,
    miner: str,
    num_identities: int,
    arcface_margin: float,
    arcface_scale: float,
    cosface_margin: float = 0.35,
    cosface_scale: float = 64.0,
    sphereface_margin: int = 4,
    sphereface_scale: float = 64.0,
) -> tuple[nn.Module | None, nn.Module | None]:
    """``(loss, miner)``: triplet (FaceNet) with its miner, a margin softmax (no miner), or ``(None, None)``.

    Args:
        loss: ``triplet``, ``arcface``, ``cosface``, ``sphereface`` or ``none``.
        dim: embedding size.
        margin / distance / miner: the triplet loss's margin, distance and mining.
        num_identities: training identities (the margin losses' classes).
        arcface_margin / arcface_scale: ArcFace's additive angular margin (degrees) and scale.
        cosface_margin / cosface_scale: CosFace's additive cosine margin and scale.
        sphereface_margin / sphereface_scale: SphereFace's multiplicative angular margin (a whole
            number) and scale.
    """
    if loss == "triplet":
        dist = LpDistance(normalize_embeddings=True, p=2, power=DISTANCES[distance])
        mine = (
            miners.BatchHardMiner(distance=dist)
            if miner == "batch_hard"
            else miners.TripletMarginMiner(margin=margin, type_of_triplets=miner, distance=dist)
        )
        return losses.TripletMarginLoss(margin=margin, distance=dist), mine
    if loss in MARGIN_LOSSES:
        m, s = {
            "arcface": (arcface_margin, arcface_scale),
            "cosface": (cosface_margin, cosface_scale),
            "sphereface": (sphereface_margin, sphereface_scale),
        }[loss]
        check_margin(loss, m, s)
        if num_identities < 2:
            raise ConfigError(
                f"task.loss={loss} needs the number of training identities in the data info, got {num_identities}"
            )
        cls = MARGIN_LOSSES[loss][0]
        return cls(num_classes=num_identities, embedding_size=dim, margin=m, scale=s), None
    return None, None


@torch.no_grad()
def active_fraction(loss: nn.Module, emb: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """Fraction of all valid triplets that violate the margin (have a non-zero loss)."""
    m = min(len(labels), _ACTIVE_ANCHORS)
    a, p, n = lmu.get_all_triplets_indices(labels[:m], labels)
    a, p, n = (t[a != p] for t in (a, p, n))  # with a reference set, an anchor is its own "positive"
    if len(a) == 0:
        return 0.0
    dist = loss.distance(emb[:m], emb)
    return float((dist[a, n] - dist[a, p] < margin).float().mean())
