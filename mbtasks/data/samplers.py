"""The P x K batch sampler of metric learning (FaceNet Sec. 3.2; Hermans et al. 2017,
"In Defense of the Triplet Loss for Person Re-Identification", arXiv:1703.07737).

Every batch holds ``P`` distinct identities with ``K`` images each, so every image in
it has ``K - 1`` positives and ``(P - 1) K`` negatives for online triplet mining.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from mbtasks.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class PKBatchSampler(Sampler[list[int]]):
    """Batches of ``p`` identities x ``k`` images, identities visited in shuffled rounds.

    Identities with a single image cannot give a positive and are left out (they
    still serve as negatives in the evaluation pairs). An identity with fewer than
    ``k`` images repeats some of them (augmentation makes the copies differ).

    Args:
        labels: identity label of every sample of the dataset.
        p: identities per batch (lowered, with a warning, to the number available).
        k: images per identity (>= 2).
        num_batches: batches per epoch; default: as many as cover each eligible image once.
        seed: the batches are a deterministic function of ``(seed, epoch)``.
        num_replicas / rank: under DDP every rank draws the same batch sequence (same seed
            and epoch) and keeps every ``num_replicas``-th batch from ``rank`` on, so the
            ranks see disjoint batches and together cover one single-process epoch.

    Yields:
        lists of ``p * k`` dataset indices, identity-grouped.
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if k < 2:
            raise ConfigError(f"data.images_per_identity={k}: needs >= 2 (an anchor and a positive)")
        groups: dict[int, list[int]] = defaultdict(list)
        for idx, label in enumerate(labels):
            groups[int(label)].append(idx)
        self.groups = {label: np.asarray(idx) for label, idx in sorted(groups.items()) if len(idx) >= 2}
        self.single_image_identities = len(groups) - len(self.groups)
        if len(self.groups) < 2:
            raise DataError(f"P x K batches need >= 2 identities with >= 2 images, got {len(self.groups)}")
        if p > len(self.groups):
            log.warning(
                "data.identities_per_batch=%d: only %d identities have >= 2 images; using P=%d",
                p,
                len(self.groups),
                len(self.groups),
            )
        self.p = min(p, len(self.groups))
        self.k = k
        eligible_images = sum(len(v) for v in self.groups.values())
        self.num_batches = int(num_batches) if num_batches else max(1, eligible_images // (self.p * self.k))
        self.seed = seed
        self.epoch = 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.num_replicas, self.rank = num_replicas, rank
        # every rank yields the same count (DDP steps in lock-step): the total, rounded up
        self.batches_per_rank = -(-self.num_batches // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_rank

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        labels = np.asarray(list(self.groups))
        queue: list[int] = []
        for b in range(self.batches_per_rank * self.num_replicas):
            chosen: list[int] = []
            while len(chosen) < self.p:
                if not queue:
                    queue = [int(v) for v in rng.permutation(labels)]
                label = queue.pop()
                if label not in chosen:
                    chosen.append(label)
            batch = []
            for label in chosen:
                idx = self.groups[label]
                if len(idx) >= self.k:
                    pick = rng.choice(idx, self.k, replace=False)
                else:
                    pick = np.concatenate([rng.permutation(idx), rng.choice(idx, self.k - len(idx))])
                batch.extend(int(i) for i in pick)
            if b % self.num_replicas == self.rank:
                yield batch
