"""Embedding predictions: embeddings of images, verification of pairs, nearest gallery identity.

- ``predict.input=DIR|FILE``: ``embeddings.npy`` (``(N, D)`` float32, unit rows) and
  ``embeddings.json`` (the files in row order, skipped files, threshold).
- ``predict.pairs=FILE``: one pair a line, two image paths (whitespace or tab separated; paths
  with spaces: tab-separated or quoted; relative paths are taken from the pairs file's folder,
  else the working directory):
  ``pairs.json`` with each pair's squared L2 distance and same/different at the
  checkpoint's threshold.
- ``predict.gallery=DIR``: identity folders ``DIR/<identity>/<image>``; every
  ``predict.input`` image (the queries) gets its nearest gallery image's identity and
  distance, and ``match`` (distance <= threshold) in ``gallery.json``.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from mbtasks.data.faces import scan_identities
from mbtasks.errors import ConfigError, DataError
from mbtasks.inference import Predictor, as_sources
from mbtasks.io import write_json_atomic
from mbtasks.results import Embedding, Identity, Verification

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
        """The verification threshold on squared L2 distances chosen on validation pairs."""
        return float(self.task.threshold)

    def predict(self, inputs: Any, skipped: dict[str, str] | None = None) -> list[Embedding]:
        """One :class:`~mbtasks.results.Embedding` (``vector``, unit length) per readable image."""
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
        return Gallery([owner[id(s)] for s in done], [s.name for s in done], vectors)

    def nearest(self, vectors: np.ndarray, gallery: Gallery, names: list[str]) -> list[Identity]:
        """Each row's nearest gallery image; ``"unknown"`` when farther than the threshold."""
        threshold = self.threshold
        # squared L2 of unit vectors: 2 - 2 cos
        dist = np.clip(2.0 - 2.0 * vectors @ gallery.vectors.T, 0.0, 4.0)
        out = []
        for name, row in zip(names, dist, strict=True):
            j = int(np.argmin(row))
            d, who = float(row[j]), gallery.identities[j]
            out.append(Identity(name, who if d <= threshold else "unknown", who, d, d <= threshold, gallery.files[j]))
        return out

    def identify(self, images: Any, gallery: str | Path | dict[str, Any] | Gallery,
                 skipped: dict[str, str] | None = None) -> list[Identity]:
        """The nearest gallery identity of each image (``"unknown"`` above the threshold).

        Args:
            images: query images (any input :meth:`predict` takes).
            gallery: a folder ``<dir>/<identity>/<image>``, ``{identity: images}``, or a :class:`Gallery`
                from :meth:`gallery` (embedded once, reused).
        """
        gallery = self.gallery(gallery)
        done, vectors = self.embed(images, skipped)
        return self.nearest(vectors, gallery, [s.name for s in done])

    def write(self, cfg: DictConfig, files: list[Path], run_dir: Path) -> dict:
        """``mode=predict``: the outputs asked for by ``predict.input`` / ``predict.pairs`` / ``predict.gallery``."""
        return write_predictions(self, cfg, files, run_dir)


def embed_files(model: EmbeddingPredictor, files: list[Path], skipped: dict[str, str]) -> tuple[list[Path], np.ndarray]:
    """Embed ``files``; unreadable ones go to ``skipped``. Returns the embedded files and ``(N, D)`` rows."""
    done, emb = model.embed(files, skipped)
    return [s.path for s in done], emb


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
            raise DataError(f"{path}:{lineno}: expected two image paths, got {len(fields)} fields: {line!r} "
                            "(separate paths that hold spaces with a tab, or quote them)")
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


def write_predictions(model: EmbeddingPredictor, cfg: DictConfig, files: list[Path], run_dir: Path) -> dict:
    """Write the outputs asked for by ``predict.input`` / ``predict.pairs`` / ``predict.gallery``."""
    threshold = model.threshold
    pairs_file, gallery_dir = cfg.predict.get("pairs"), cfg.predict.get("gallery")
    if gallery_dir and not files:
        raise ConfigError("predict.gallery needs query images: set predict.input=FILE_OR_DIR as well")
    out: dict = {"threshold": threshold, "distance": "squared_l2"}
    skipped: dict[str, str] = {}
    embedded, emb = embed_files(model, files, skipped) if files else ([], None)
    if files:
        np.save(run_dir / "embeddings.npy", emb)
        index = {"files": [str(p) for p in embedded], "dim": int(emb.shape[1]), "threshold": threshold,
                 "distance": "squared_l2", "skipped": skipped}
        write_json_atomic(run_dir / "embeddings.json", index)
        out["embeddings"] = index
        log.info("wrote %d embeddings to %s", len(embedded), run_dir / "embeddings.npy")
    if pairs_file:
        out["pairs"] = _predict_pairs(model, pairs_file, threshold)
        write_json_atomic(run_dir / "pairs.json", out["pairs"])
        log.info("wrote %d pair decisions to %s", len(out["pairs"]["pairs"]), run_dir / "pairs.json")
    if gallery_dir:
        out["gallery"] = _predict_gallery(model, gallery_dir, embedded, emb, threshold)
        write_json_atomic(run_dir / "gallery.json", out["gallery"])
        log.info("wrote nearest identities of %d queries to %s", len(embedded), run_dir / "gallery.json")
    for path, reason in skipped.items():
        log.warning("skipped %s: %s", path, reason)
    return out


def _predict_pairs(model: EmbeddingPredictor, pairs_file, threshold: float) -> dict:
    pairs = read_pair_list(pairs_file)
    unique = sorted({p for pair in pairs for p in pair})
    skipped: dict[str, str] = {}
    done, emb = embed_files(model, unique, skipped)
    row = {p: i for i, p in enumerate(done)}
    results = []
    for a, b in pairs:
        if a in row and b in row:
            d = float(np.sum((emb[row[a]] - emb[row[b]]) ** 2))
            results.append({"a": str(a), "b": str(b), "distance": round(d, 6), "same": d <= threshold})
        else:
            bad = a if a not in row else b
            results.append({"a": str(a), "b": str(b), "distance": None, "same": None,
                            "error": skipped.get(str(bad), "unreadable")})
    return {"threshold": threshold, "pairs": results, "skipped": skipped}


def _predict_gallery(model: EmbeddingPredictor, gallery_dir, queries: list[Path], query_emb: np.ndarray,
                     threshold: float) -> dict:
    skipped: dict[str, str] = {}
    gallery = model.gallery(gallery_dir, skipped)
    found = model.nearest(query_emb, gallery, [str(q) for q in queries]) if len(queries) else []
    results = [{"file": r.source, "identity": r.nearest, "distance": round(r.distance, 6), "match": r.match,
                "nearest_file": r.nearest_file} for r in found]
    return {"threshold": threshold, "gallery": str(gallery_dir), "gallery_identities": len(set(gallery.identities)),
            "gallery_images": len(gallery), "queries": results, "skipped": skipped}
