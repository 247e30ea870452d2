"""Embedding's side of ``mode=predict``: what its ``predict.*`` keys ask for, written into the run dir.

- ``predict.input=DIR|FILE``: ``embeddings.npy`` (``(N, D)`` float32, unit rows) and
  ``embeddings.json`` (the files in row order, skipped files, threshold).
- ``predict.pairs=FILE``: one pair a line, two image paths (whitespace or tab separated; paths
  with spaces: tab-separated or quoted; relative paths are taken from the pairs file's folder,
  else the working directory): ``pairs.json`` with each pair's squared L2 distance and
  same/different at the checkpoint's threshold.
- ``predict.gallery=DIR``: identity folders ``DIR/<identity>/<image>``; every ``predict.input``
  image (the queries) gets its nearest gallery image's identity and distance, and ``match``
  (distance <= the 1:N threshold, else ``"unknown"``) in ``gallery.json``.
- ``predict.detector=<detection checkpoint>``: the photos' detections are cropped, embedded and named
  from ``predict.gallery`` (:class:`~mbtasks.tasks.embedding.identify.Pipeline`): ``identities.json``
  and ``drawn/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mbtasks.atomic_files import unique_name, write_json_atomic
from mbtasks.errors import ConfigError
from mbtasks.inference.settings import PredictSettings
from mbtasks.tasks.embedding.identify import Pipeline
from mbtasks.tasks.embedding.predict_options import EmbeddingPredictOptions
from mbtasks.tasks.embedding.predictor import EmbeddingPredictor, read_pair_list, threshold_info
from mbtasks.tasks.loading import load_predictor

log = logging.getLogger(__name__)

__all__ = ["EmbeddingPredictOptions", "write_predictions"]


def write_predictions(model: EmbeddingPredictor, files: list[Path], settings: PredictSettings, run_dir: Path) -> dict:
    """Write the outputs asked for by ``predict.input`` / ``pairs`` / ``gallery`` / ``detector``."""
    options: EmbeddingPredictOptions = settings.options
    if options.detector:
        return write_identities(model, files, settings, run_dir)
    threshold = model.threshold
    if options.gallery and not files:
        raise ConfigError("predict.gallery needs query images: set predict.input=FILE_OR_DIR as well")
    out: dict = {"threshold": threshold, "distance": "squared_l2"}
    skipped: dict[str, str] = {}
    embedded, emb = _embed_files(model, files, skipped) if files else ([], None)
    if files:
        np.save(run_dir / "embeddings.npy", emb)
        index = {
            "files": [str(p) for p in embedded],
            "dim": int(emb.shape[1]),
            "threshold": threshold,
            "distance": "squared_l2",
            "skipped": skipped,
        }
        write_json_atomic(run_dir / "embeddings.json", index)
        out["embeddings"] = index
        log.info("wrote %d embeddings to %s", len(embedded), run_dir / "embeddings.npy")
    if options.pairs:
        out["pairs"] = _predict_pairs(model, options.pairs, threshold)
        write_json_atomic(run_dir / "pairs.json", out["pairs"])
        log.info("wrote %d pair decisions to %s", len(out["pairs"]["pairs"]), run_dir / "pairs.json")
    if options.gallery:
        given = options.identify_threshold
        out["gallery"] = _predict_gallery(
            model, options.gallery, embedded, emb, model.identify_threshold if given is None else float(given)
        )
        write_json_atomic(run_dir / "gallery.json", out["gallery"])
        log.info("wrote nearest identities of %d queries to %s", len(embedded), run_dir / "gallery.json")
    for path, reason in skipped.items():
        log.warning("skipped %s: %s", path, reason)
    return out


def _embed_files(
    model: EmbeddingPredictor, files: list[Path], skipped: dict[str, str]
) -> tuple[list[Path], np.ndarray]:
    """Embed ``files``; unreadable ones go to ``skipped``. Returns the embedded files and ``(N, D)`` rows."""
    done, emb = model.embed(files, skipped)
    return [s.path for s in done], emb


def _predict_pairs(model: EmbeddingPredictor, pairs_file, threshold: float) -> dict:
    pairs = read_pair_list(pairs_file)
    unique = sorted({p for pair in pairs for p in pair})
    skipped: dict[str, str] = {}
    done, emb = _embed_files(model, unique, skipped)
    row = {p: i for i, p in enumerate(done)}
    results = []
    for a, b in pairs:
        if a in row and b in row:
            d = float(np.sum((emb[row[a]] - emb[row[b]]) ** 2))
            results.append({"a": str(a), "b": str(b), "distance": round(d, 6), "same": d <= threshold})
        else:
            bad = a if a not in row else b
            results.append(
                {"a": str(a), "b": str(b), "distance": None, "same": None, "error": skipped.get(str(bad), "unreadable")}
            )
    return {"threshold": threshold, "pairs": results, "skipped": skipped}


def _predict_gallery(
    model: EmbeddingPredictor, gallery_dir, queries: list[Path], query_emb: np.ndarray, threshold: float
) -> dict:
    skipped: dict[str, str] = {}
    gallery = model.gallery(gallery_dir, skipped)
    found = model.nearest(query_emb, gallery, [str(q) for q in queries], threshold) if len(queries) else []
    results = [r.to_dict() for r in found]
    return {
        **threshold_info(model, threshold),
        "gallery": str(gallery_dir),
        "gallery_identities": len(set(gallery.identities)),
        "gallery_images": len(gallery),
        "queries": results,
        "skipped": skipped,
    }


def write_identities(model: EmbeddingPredictor, files: list[Path], settings: PredictSettings, run_dir: Path) -> dict:
    """``predict.detector``: ``identities.json`` and ``drawn/<photo>``.

    ``identities.json``: ``{"photos": [{"file", "faces": [{"box" x1y1x2y2, "score", "identity"
    ("unknown" above the threshold), "nearest", "distance", "match"}]}], "threshold" (1:N),
    "threshold_source" (open_set | verification | predict.identify_threshold), "verification_threshold",
    "score_threshold", "crop_margin", "warnings", ...}``.
    """
    options: EmbeddingPredictOptions = settings.options
    # the detector with the same fast path as the embedder (predict.fold_bn, precision...)
    pipeline = Pipeline(
        load_predictor(options.detector, **settings.loading()),
        model,
        options.crop_margin,
        options.crop_square,
        settings.score_threshold,
        list(options.detector_classes or []) or None,
        identify_threshold=options.identify_threshold,
    )
    if not options.gallery:
        raise ConfigError("predict.detector needs predict.gallery=DIR (identity folders <dir>/<identity>/<image>)")
    if not files:
        raise ConfigError("predict.detector needs photos: set predict.input=FILE_OR_DIR")
    skipped: dict[str, str] = {}
    photos = pipeline.identify(files, options.gallery, skipped)
    drawn = run_dir / "drawn"
    used: set[str] = set()
    for i, photo in enumerate(photos):
        photo.save(drawn / unique_name(used, Path(photo.source).name, i))
    out = {
        "photos": [p.to_dict() for p in photos],
        **threshold_info(pipeline.embedder, pipeline.identify_threshold),
        "distance": "squared_l2",
        "detector": str(pipeline.detector.checkpoint),
        "embedder": str(pipeline.embedder.checkpoint),
        "gallery": str(options.gallery),
        "crop_margin": pipeline.margin,
        "crop_square": pipeline.square,
        "score_threshold": pipeline.score_threshold,
        "skipped": skipped,
        "warnings": pipeline.warnings + pipeline.photo_warnings,
    }
    write_json_atomic(run_dir / "identities.json", out)
    for path, reason in skipped.items():
        log.warning("skipped %s: %s", path, reason)
    faces = sum(len(p.faces) for p in photos)
    known = sum(f.match for p in photos for f in p.faces)
    log.info(
        "%d photos, %d faces (%d identified, %d unknown): %s, drawn images in %s",
        len(photos),
        faces,
        known,
        faces - known,
        run_dir / "identities.json",
        drawn,
    )
    return out
