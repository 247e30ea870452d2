"""Open-set (1:N) identification: the watch-list protocol (Phillips et al., FRVT 2002 Evaluation
Report, Sec. 6; NIST FRVT 1:N, Grother et al., NISTIR 8271: FNIR at FPIR).

A query's nearest gallery identity (the nearest enrolled image, squared L2) is accepted when
its distance is at most a threshold; otherwise the query is ``unknown``. On labelled
embeddings the protocol splits the *identities*: ``gallery_size`` of them are enrolled with
``enrol`` images each, their other images are the known queries, and every image of the other
identities is an unknown query (a stranger). Over one threshold:

- FAR (false-alarm rate, FPIR): the fraction of unknown queries given a gallery identity;
- DIR (detection-and-identification rate, TPIR): the fraction of known queries accepted *and*
  given their own identity.

DIR@FAR = f is the DIR at the largest threshold whose FAR on these queries is <= f. It is only
measured with at least ``1/f`` unknown queries; otherwise it is ``None`` and a note says why.
Several random gallery / unknown splits (``trials``) are pooled, so every identity takes both parts.

False alarms grow with the gallery: a stranger is compared with every enrolled identity and
only the nearest counts. A threshold chosen here holds for galleries of about ``gallery_size``
identities (at most half the split's identities are enrolled, so that the other half, the
strangers, are many people); with independent identities, a gallery ``k`` times larger has a FAR of about
``1 - (1 - FAR) ** k`` (:func:`far_for_gallery`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# fewer distinct strangers than this: the tail the threshold sits in is a few people's, noted
FEW_STRANGERS = 10


@dataclass
class OpenSetSplit:
    """One trial: image indices enrolled (``gallery``), queried from gallery identities (``known``) and
    from the other identities (``unknown``)."""

    gallery: np.ndarray
    known: np.ndarray
    unknown: np.ndarray


@dataclass
class OpenSetResult:
    """The protocol's outcome on one split, the trials pooled.

    Attributes:
        threshold: the squared-L2 threshold whose FAR on the unknown queries is <= ``target_far``
            (what checkpoints store for 1:N search).
        target_far: the FAR it was chosen for.
        far / dir: FAR and DIR at ``threshold`` on these queries.
        dir_at_far: ``{far: DIR or None}`` (None: fewer than ``1/far`` unknown queries).
        rank1: closed-set rank-1 rate: known queries whose nearest identity is their own.
        gallery_size: enrolled identities per trial.
        num_known / num_unknown: queries pooled over the trials.
        notes: what could not be measured and why.
        known_distance / known_correct / unknown_distance: the pooled queries' nearest distances (and
            whether a known query's nearest identity is its own), to score other thresholds (:func:`rates_at`).
    """

    threshold: float
    target_far: float
    far: float
    dir: float
    dir_at_far: dict[float, float | None]
    rank1: float
    gallery_size: int
    num_known: int
    num_unknown: int
    trials: int
    notes: list[str] = field(default_factory=list)
    known_distance: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    known_correct: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)
    unknown_distance: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)


def dir_key(far: float) -> str:
    """``0.01 -> "dir_at_far_0.01"`` (the metric name)."""
    return f"dir_at_far_{far:g}"


def open_set_splits(
    labels: np.ndarray, gallery_size: int, enrol: int = 2, trials: int = 10, seed: int = 0
) -> list[OpenSetSplit]:
    """Random identity-disjoint gallery / unknown splits of labelled images, deterministically.

    Args:
        labels: ``(N,)`` identity of each image.
        gallery_size: identities enrolled per trial, capped at half the identities, so that the
            strangers, whose nearest distances set the threshold, are many people too.
        enrol: images enrolled per gallery identity (all of them when it has fewer); its other images
            are known queries.
        trials: how many splits.
        seed: of the identity and image draws.

    Returns:
        ``trials`` splits; ``[]`` with fewer than 2 identities.
    """
    labels = np.asarray(labels)
    ids = np.unique(labels)
    if len(ids) < 2:
        return []
    size = max(1, min(int(gallery_size), len(ids) // 2))
    members = {i: np.flatnonzero(labels == i) for i in ids.tolist()}
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        chosen = rng.permutation(ids)
        gallery, known = [], []
        for identity in chosen[:size].tolist():
            images = rng.permutation(members[identity])
            gallery.append(images[:enrol])
            known.append(images[enrol:])
        unknown = [members[i] for i in chosen[size:].tolist()]
        out.append(
            OpenSetSplit(
                np.sort(np.concatenate(gallery)), np.sort(np.concatenate(known)), np.sort(np.concatenate(unknown))
            )
        )
    return out


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` squared L2 distances of the rows of ``a`` ``(N, D)`` and ``b`` ``(M, D)`` (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def nearest_identity(
    gallery: np.ndarray, gallery_labels: np.ndarray, queries: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's nearest gallery image: ``(its identity (Q,), squared L2 distance (Q,))``."""
    gallery_labels = np.asarray(gallery_labels)
    if not len(queries):
        return gallery_labels[:0], np.zeros(0)
    d = squared_distances(queries, gallery)
    j = d.argmin(1)
    return gallery_labels[j], d[np.arange(len(d)), j]


def threshold_at_far(unknown: np.ndarray, far: float, known: np.ndarray | None = None) -> float:
    """The threshold accepting at most ``floor(far * len(unknown))`` of the ``unknown`` distances, as
    large as that allows (``accept iff distance <= threshold``).

    It sits halfway between the first unknown distance it must reject and the largest distance
    of any query below it (``known`` ones included), so it generalises to new queries. With
    too few unknown queries to resolve ``far`` (``< 1/far``), no unknown query is accepted.
    """
    u = np.sort(np.asarray(unknown, np.float64))
    if not len(u):
        raise ValueError("threshold_at_far needs unknown-query distances")
    allowed = math.floor(far * len(u) + 1e-9)
    if allowed >= len(u):
        return float(u[-1]) + 1e-6
    first_rejected = u[allowed]
    below = np.concatenate([u, np.asarray(known if known is not None else [], np.float64)])
    below = below[below < first_rejected]
    return float((below.max() + first_rejected) / 2) if len(below) else float(first_rejected) / 2


def rates_at(
    threshold: float, known_distance: np.ndarray, known_correct: np.ndarray, unknown_distance: np.ndarray
) -> tuple[float, float]:
    """``(DIR, FAR)`` at ``threshold`` (NaN where there are no queries of that kind)."""
    kd, kc, ud = (np.asarray(a) for a in (known_distance, known_correct, unknown_distance))
    dir_ = float(np.mean(kc.astype(bool) & (kd <= threshold))) if len(kd) else float("nan")
    far = float(np.mean(ud <= threshold)) if len(ud) else float("nan")
    return dir_, far


def dir_at_far(
    known_distance: np.ndarray, known_correct: np.ndarray, unknown_distance: np.ndarray, far: float
) -> float | None:
    """The detection-and-identification rate at a false-alarm rate <= ``far``; None with fewer than
    ``1/far`` unknown queries or no known query."""
    if len(unknown_distance) < math.ceil(1 / far - 1e-9) or not len(known_distance):
        return None
    threshold = threshold_at_far(unknown_distance, far, known_distance)
    return rates_at(threshold, known_distance, known_correct, unknown_distance)[0]


def far_for_gallery(far: float, gallery_size: int, new_size: int) -> float:
    """The FAR a threshold with FAR ``far`` at ``gallery_size`` identities has at ``new_size``, when
    strangers' distances to different identities are independent: ``1 - (1 - far) ** (new / old)``."""
    return 1.0 - (1.0 - far) ** (new_size / max(gallery_size, 1))


def evaluate_open_set(
    embeddings: np.ndarray,
    labels: np.ndarray,
    target_far: float = 0.01,
    fars: tuple[float, ...] = (0.01, 0.1),
    gallery_size: int = 20,
    enrol: int = 2,
    trials: int = 10,
    seed: int = 0,
) -> OpenSetResult | None:
    """The open-set protocol on labelled embeddings (see the module docstring).

    Args:
        embeddings: ``(N, D)`` (unit length: distances in [0, 4]).
        labels: ``(N,)`` identity of each row.
        target_far: the FAR the returned ``threshold`` is chosen for.
        fars: FARs at which to report DIR.
        gallery_size / enrol / trials / seed: as for :func:`open_set_splits`.

    Returns:
        an :class:`OpenSetResult`, or None with fewer than 2 identities.
    """
    emb = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    splits = open_set_splits(labels, gallery_size, enrol, trials, seed)
    if not splits:
        return None
    kd, kc, ud = [], [], []
    for s in splits:
        who, dist = nearest_identity(emb[s.gallery], labels[s.gallery], emb[s.known])
        kd.append(dist)
        kc.append(who == labels[s.known])
        ud.append(nearest_identity(emb[s.gallery], labels[s.gallery], emb[s.unknown])[1])
    kd, kc, ud = np.concatenate(kd), np.concatenate(kc).astype(bool), np.concatenate(ud)
    size = len(np.unique(labels[splits[0].gallery]))
    notes = []
    strangers = len(np.unique(labels)) - size
    if strangers < FEW_STRANGERS:
        notes.append(
            f"{strangers} stranger identities per trial ({len(np.unique(labels))} identities, {size} "
            "enrolled): the threshold rests on few people and may let far more strangers through on new "
            "ones (hold out more identities)"
        )
    threshold = threshold_at_far(ud, target_far, kd)
    if len(ud) < math.ceil(1 / target_far - 1e-9):
        notes.append(
            f"the 1:N threshold for FAR {target_far:g} needs >= {math.ceil(1 / target_far - 1e-9)} "
            f"unknown queries, there are {len(ud)}: it accepts none of them (stricter than asked)"
        )
    dir_, far = rates_at(threshold, kd, kc, ud)
    found = {}
    for f in fars:
        found[f] = dir_at_far(kd, kc, ud, f)
        if found[f] is None:
            notes.append(
                f"DIR@FAR={f:g} not measured: {len(ud)} unknown and {len(kd)} known queries, needs "
                f">= {math.ceil(1 / f - 1e-9)} unknown and one known"
            )
    if not len(kd):
        notes.append(f"no known query: every gallery identity has <= {enrol} images (all enrolled)")
    return OpenSetResult(
        threshold=threshold,
        target_far=float(target_far),
        far=far,
        dir=dir_,
        dir_at_far=found,
        rank1=float(kc.mean()) if len(kc) else float("nan"),
        gallery_size=size,
        num_known=len(kd),
        num_unknown=len(ud),
        trials=len(splits),
        notes=notes,
        known_distance=kd,
        known_correct=kc,
        unknown_distance=ud,
    )
