"""The metric losses and triplet miners of the embedding task (pytorch-metric-learning)."""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from mbtasks.errors import ConfigError, suggest

LOSSES = ("triplet", "arcface", "none")
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
        raise ConfigError(f"task.distance={distance!r}: expected one of {list(DISTANCES)}.{suggest(distance, DISTANCES)}")


def metric_loss(loss: str, dim: int, margin: float, distance: str, miner: str, num_identities: int,
                arcface_margin: float, arcface_scale: float) -> tuple[nn.Module | None, nn.Module | None]:
    """``(loss, miner)``: triplet (FaceNet) with its miner, ArcFace (no miner), or ``(None, None)``.

    Args:
        loss: ``triplet``, ``arcface`` or ``none``.
        dim: embedding size.
        margin / distance / miner: the triplet loss's margin, distance and mining.
        num_identities: training identities (ArcFace's classes).
        arcface_margin / arcface_scale: ArcFace's angular margin (degrees) and scale.
    """
    if loss == "triplet":
        dist = LpDistance(normalize_embeddings=True, p=2, power=DISTANCES[distance])
        mine = (miners.BatchHardMiner(distance=dist) if miner == "batch_hard"
                else miners.TripletMarginMiner(margin=margin, type_of_triplets=miner, distance=dist))
        return losses.TripletMarginLoss(margin=margin, distance=dist), mine
    if loss == "arcface":
        if num_identities < 2:
            raise ConfigError(f"task.loss=arcface needs the number of training identities in the data info, "
                              f"got {num_identities}")
        return losses.ArcFaceLoss(num_identities, dim, margin=arcface_margin, scale=arcface_scale), None
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
