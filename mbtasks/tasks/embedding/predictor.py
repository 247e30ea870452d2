"""Embedding predictions: embeddings of images, verification of two images, nearest gallery identity,
clusters; and the pairs files ``predict.pairs`` reads (:func:`read_pair_list`).

Two thresholds: pairs use the 1:1 verification threshold; a gallery search (nearest of M
identities) uses the checkpoint's open-set (1:N) threshold, chosen on validation identities held
out of the gallery for ``task.open_set_far`` (:mod:`mbtasks.metrics.open_set`), or
``predict.identify_threshold`` when given.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from mbtasks.data.faces import scan_identities
from mbtasks.errors import ConfigError, DataError
from mbtasks.inference import Predictor, as_sources
from mbtasks.metrics.open_set import far_for_gallery
from mbtasks.tasks.embedding.results import Embedding, Identity, Verification

log = logging.getLogger(__name__)


ImageInput = Any


@dataclass
class Gallery:
    """Embedded gallery images: ``vectors`` ``(M, D)`` with the ``identities`` and ``files`` of each row."""

    identities: list[str]
    files: list[str]
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.files)


class EmbeddingPredictor(Predictor):
    """An embedding checkpoint: :meth:`predict` / :meth:`embed`, :meth:`verify` two images,
    :meth:`identify` images against a gallery."""

    @property
    def threshold(self) -> float:
        """The 1:1 verification threshold on squared L2 distances chosen on validation pairs."""
        return float(self.task.threshold)

    @property
    def identify_threshold(self) -> float:
        """The 1:N threshold a gallery search applies: the checkpoint's open-set threshold; a checkpoint
        written before it existed falls back to the verification threshold, with a warning (once)."""
        if self.threshold_source == "open_set":
            return float(self.task.open_set_threshold)
        if not getattr(self, "_fallback_warned", False):
            self._fallback_warned = True
            log.warning(
                "%s has no 1:N (open-set) threshold (written before it existed): gallery searches use the "
                "1:1 verification threshold %.3g, which lets more strangers through as the gallery grows; "
                "retrain (or fine-tune) to store one, or set predict.identify_threshold",
                self.checkpoint or "this embedder",
                self.threshold,
            )
        return self.threshold

    @property
    def threshold_source(self) -> str:
        """Where :attr:`identify_threshold` comes from: ``open_set`` or ``verification`` (the fallback)."""
        return "open_set" if float(getattr(self.task, "open_set_threshold", -1.0)) >= 0 else "verification"

    @property
    def open_set_gallery_size(self) -> int:
        """The gallery size (identities) the 1:N threshold was chosen at (0: not stored)."""
        return int(getattr(self.task, "open_set_gallery", 0))

    @property
    def open_set_far(self) -> float:
        """The false-alarm rate the 1:N threshold was chosen for."""
        return float(getattr(self.task, "open_set_far", float("nan")))

    def predict(self, inputs: Any, skipped: dict[str, str] | None = None) -> list[Embedding]:
        """One :class:`~mbtasks.tasks.embedding.results.Embedding` (``vector``, unit length) per readable image."""
        return [Embedding(s.name, v) for s, v in zip(*self.embed(inputs, skipped), strict=True)]

    def embed(self, inputs: Any, skipped: dict[str, str] | None = None) -> tuple[list, np.ndarray]:
        """The embedded sources and their ``(N, D)`` float32 unit-length rows."""
        done, rows = [], []
        for sources, _, batch in self.batches(inputs, skipped):
            rows.append(self.forward(batch).float().cpu().numpy())
            done.extend(sources)
        dim = int(self.task.model.dim)
        return done, (np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)).astype(np.float32)

    def verify(self, a: ImageInput, b: ImageInput) -> Verification:
        """Are two images the same identity? Squared L2 distance against the checkpoint's threshold."""
        _, emb = self.embed([a, b])
        distance = float(np.sum((emb[0] - emb[1]) ** 2))
        return Verification(distance <= self.threshold, distance, self.threshold)

    def gallery(self, spec: str | Path | dict[str, Any] | Gallery, skipped: dict[str, str] | None = None) -> Gallery:
        """Embed a gallery: a folder ``<dir>/<identity>/<image>`` or ``{identity: images}``."""
        if isinstance(spec, Gallery):
            return spec
        if isinstance(spec, str | Path):
            spec = scan_identities(spec)
        sources, owners = [], []
        for identity, images in spec.items():
            found = as_sources(images if isinstance(images, list | tuple) else [images])
            sources += found
            owners += [str(identity)] * len(found)
        owner = {id(s): o for s, o in zip(sources, owners, strict=True)}
        done, vectors = self.embed(sources, skipped if skipped is not None else {})
        if not done:
            raise DataError(f"{spec if not isinstance(spec, dict) else 'gallery'}: no readable gallery image")
        gallery = Gallery([owner[id(s)] for s in done], [s.name for s in done], vectors)
        self._check_gallery_size(gallery)
        return gallery

    def _check_gallery_size(self, gallery: Gallery) -> None:
        """Warn when the gallery is much larger than the one the 1:N threshold was chosen at."""
        size, chosen = len(set(gallery.identities)), self.open_set_gallery_size
        if self.threshold_source == "open_set" and chosen and size > 2 * chosen:
            log.warning(
                "the gallery holds %d identities; %s's 1:N threshold %.3g was chosen for %d (false-alarm rate "
                "%g): strangers are compared with every identity, so expect a false-alarm rate of about %.2g "
                "(retrain with task.open_set_gallery_size=%d, given as many validation identities, or set a "
                "lower predict.identify_threshold)",
                size,
                self.checkpoint or "the embedder",
                self.identify_threshold,
                chosen,
                self.open_set_far,
                far_for_gallery(self.open_set_far, chosen, size),
                size,
            )

    def nearest(
        self, vectors: np.ndarray, gallery: Gallery, names: list[str], threshold: float | None = None
    ) -> list[Identity]:
        """Each row's nearest gallery image; ``"unknown"`` when farther than ``threshold`` (default: the
        1:N :attr:`identify_threshold`)."""
        threshold = self.identify_threshold if threshold is None else float(threshold)
        # squared L2 of unit vectors: 2 - 2 cos
        dist = np.clip(2.0 - 2.0 * vectors @ gallery.vectors.T, 0.0, 4.0)
        out = []
        for name, row in zip(names, dist, strict=True):
            j = int(np.argmin(row))
            d, who = float(row[j]), gallery.identities[j]
            out.append(Identity(name, who if d <= threshold else "unknown", who, d, d <= threshold, gallery.files[j]))
        return out

    def identify(
        self,
        images: Any,
        gallery: str | Path | dict[str, Any] | Gallery,
        skipped: dict[str, str] | None = None,
        threshold: float | None = None,
    ) -> list[Identity]:
        """The nearest gallery identity of each image (``"unknown"`` above the 1:N threshold).

        Args:
            images: query images (any input :meth:`predict` takes).
            gallery: a folder ``<dir>/<identity>/<image>``, ``{identity: images}``, or a :class:`Gallery`
                from :meth:`gallery` (embedded once, reused).
            threshold: squared L2 (default: :attr:`identify_threshold`).
        """
        gallery = self.gallery(gallery)
        done, vectors = self.embed(images, skipped)
        return self.nearest(vectors, gallery, [s.name for s in done], threshold)

    def cluster(
        self, images: Any, threshold: float | None = None, skipped: dict[str, str] | None = None
    ) -> dict[str, list[str]]:
        """Group images into identities without a gallery (:func:`cluster_embeddings`).

        Args:
            images: any input :meth:`predict` takes.
            threshold: squared L2 (default: the verification :attr:`threshold`).

        Returns:
            ``{"person_1": [sources], ...}``, the largest group first.
        """
        done, vectors = self.embed(images, skipped)
        labels = cluster_embeddings(vectors, self.threshold if threshold is None else float(threshold))
        groups: dict[str, list[str]] = {}
        for source, label in zip(done, labels, strict=True):
            groups.setdefault(f"person_{label + 1}", []).append(source.name)
        return groups


def cluster_embeddings(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Agglomerative clustering (scikit-learn) of ``(N, D)`` embeddings into identities.

    Average linkage on squared L2 distances: two groups merge while the mean distance of their
    image pairs is below ``threshold``, a 1:1 "same person?" decision made on whole groups (hence
    the verification threshold by default; the stricter 1:N threshold gives fewer false merges).

    Returns:
        ``(N,)`` int cluster of each row, numbered by size (0: the largest group).
    """
    vectors = np.asarray(vectors, np.float64)
    if len(vectors) < 2:
        return np.zeros(len(vectors), np.int64)
    dist = np.maximum((vectors**2).sum(1)[:, None] + (vectors**2).sum(1)[None, :] - 2 * vectors @ vectors.T, 0)
    found = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average", distance_threshold=max(float(threshold), 1e-12)
    ).fit_predict(dist)
    sizes = np.bincount(found)
    order = sorted(range(len(sizes)), key=lambda c: (-sizes[c], int(np.flatnonzero(found == c)[0])))
    rank = np.empty(len(sizes), np.int64)
    rank[order] = np.arange(len(sizes))
    return rank[found]


def _resolve(field: str, folder: Path) -> Path | None:
    candidate = Path(field)
    if not candidate.is_absolute() and (folder / candidate).is_file():
        return folder / candidate
    return candidate if candidate.is_file() else None


def split_pair_line(line: str, folder: Path) -> list[str]:
    """The two paths of a pairs line.

    Tab-separated fields are taken as they are; otherwise shell-style quoting (``"a b.jpg" c.jpg``);
    when that does not give two existing files (an apostrophe in ``O'Brien.jpg``, or unquoted
    spaces), the one split of the whitespace-separated words into two existing files is used.
    """
    if "\t" in line:
        return [f.strip() for f in line.split("\t") if f.strip()]
    try:
        fields = shlex.split(line)
    except ValueError:  # an unmatched quote: a name with an apostrophe
        fields = []
    if len(fields) == 2 and all(_resolve(f, folder) for f in fields):
        return fields
    words = line.split()
    splits = [(" ".join(words[:i]), " ".join(words[i:])) for i in range(1, len(words))]
    found = [list(pair) for pair in splits if _resolve(pair[0], folder) and _resolve(pair[1], folder)]
    if len(found) == 1:
        return found[0]
    return fields or words


def read_pair_list(path: str | Path) -> list[tuple[Path, Path]]:
    """Parse a file of image pairs, two paths a line (``#`` comments and blank lines ignored).

    Paths with spaces: separate the two paths with a tab, or quote them (see :func:`split_pair_line`).

    Raises:
        DataError: a line without exactly two paths, or naming a missing image (line number given).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"predict.pairs={path}: file not found")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = split_pair_line(line, path.parent)
        if len(fields) != 2:
            raise DataError(
                f"{path}:{lineno}: expected two image paths, got {len(fields)} fields: {line!r} "
                "(separate paths that hold spaces with a tab, or quote them)"
            )
        resolved = []
        for field in fields:
            candidate = _resolve(field, path.parent)
            if candidate is None:
                raise DataError(f"{path}:{lineno}: image {field} not found")
            resolved.append(candidate)
        out.append((resolved[0], resolved[1]))
    if not out:
        raise DataError(f"{path}: no pairs found")
    return out


def threshold_info(model: EmbeddingPredictor, threshold: float) -> dict:
    """What the outputs say about the 1:N threshold applied: its value, where it comes from, the
    verification threshold, and the gallery size and FAR it was chosen for."""
    source = model.threshold_source if threshold == model.identify_threshold else "predict.identify_threshold"
    info = {"threshold": threshold, "threshold_source": source, "verification_threshold": model.threshold}
    if source == "open_set":
        info.update(open_set_far=model.open_set_far, open_set_gallery_size=model.open_set_gallery_size)
    return info
