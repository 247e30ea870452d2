"""Open-set (1:N) identification: the protocol and DIR@FAR on crafted embeddings, the stored 1:N
threshold ("unknown" for a stranger the verification threshold would accept), old checkpoints' fallback,
one source for the chain's thresholds (CLI = Pipeline), clustering without a gallery."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mbtasks
from mbtasks.errors import ConfigError
from mbtasks.metrics.open_set import (
    dir_at_far,
    dir_key,
    evaluate_open_set,
    far_for_gallery,
    nearest_identity,
    open_set_splits,
    rates_at,
    threshold_at_far,
)
from mbtasks.pipeline import Pipeline, pipeline_defaults
from mbtasks.tasks import build_task
from mbtasks.tasks.embedding.predictor import Gallery, cluster_embeddings
from tests.conftest import compose_cfg, run_mode, save_checkpoint
from tests.test_embedding_cli import tiny_overrides

LEGACY = Path(__file__).parent / "legacy"
EMB_INFO = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "num_train_identities": 4}


# ------------------------------------------------------------------ the protocol (pure functions)
def test_dir_at_far_by_hand():
    known = np.array([0.1, 0.2, 0.5, 0.9])
    correct = np.array([True, True, False, True])  # the query at 0.5 is nearest to someone else
    unknown = np.array([0.3, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2])
    # FAR 0.1 of 10 strangers: one may pass (0.3), 0.6 must not; halfway between 0.5 (a known query) and 0.6
    assert threshold_at_far(unknown, 0.1, known) == pytest.approx(0.55)
    assert dir_at_far(known, correct, unknown, 0.1) == pytest.approx(0.5)  # 0.1 and 0.2; 0.5 is the wrong person
    assert rates_at(0.55, known, correct, unknown) == pytest.approx((0.5, 0.1))
    assert dir_at_far(known, correct, unknown, 0.2) == pytest.approx(0.5)  # threshold 0.7: 0.9 still out
    assert threshold_at_far(unknown, 0.4, known) == pytest.approx(1.1)
    assert dir_at_far(known, correct, unknown, 0.4) == pytest.approx(0.75)
    assert dir_at_far(known, correct, unknown, 0.01) is None  # 10 strangers cannot measure FAR 0.01
    # too few strangers for the asked FAR: the threshold accepts none of them
    assert threshold_at_far(unknown, 0.01, known) == pytest.approx(0.25)  # between 0.2 (known) and 0.3
    assert threshold_at_far(np.array([0.8, 0.8, 0.8]), 0.01) == pytest.approx(0.4)  # nothing below: half
    assert dir_key(0.01) == "dir_at_far_0.01" and dir_key(0.1) == "dir_at_far_0.1"


def test_open_set_on_crafted_embeddings():
    """Three identities on orthogonal axes, each image exactly on its axis: every known query is at
    distance 0 from its own enrolled image, every stranger at 2 from everyone."""
    emb = np.repeat(np.eye(3), 3, axis=0)
    labels = np.repeat([0, 1, 2], 3)
    r = evaluate_open_set(emb, labels, target_far=0.01, fars=(0.01, 0.1), gallery_size=2, enrol=1, trials=4)
    assert r.gallery_size == 1 and r.trials == 4  # at most half the identities enrolled
    assert r.num_known == 4 * 1 * 2 and r.num_unknown == 4 * 2 * 3
    assert r.threshold == pytest.approx(1.0)  # halfway between the known queries (0) and the strangers (2)
    assert r.far == 0.0 and r.dir == 1.0 and r.rank1 == 1.0
    assert r.dir_at_far[0.1] == 1.0 and r.dir_at_far[0.01] is None
    assert any("DIR@FAR=0.01 not measured" in n for n in r.notes)
    assert evaluate_open_set(emb[:3], labels[:3]) is None  # one identity: no stranger possible


def test_a_stranger_near_an_enrolled_identity_is_a_false_alarm():
    """Alice and Bob enrolled far apart; a stranger sits 0.04 from Alice, Alice's own query 0.01 from her."""
    alice, bob = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    query = np.array([0.995, 0.0, math.sqrt(1 - 0.995**2)])  # squared L2 to alice: 2 - 2 * 0.995 = 0.01
    stranger = np.array([0.98, 0.0, -math.sqrt(1 - 0.98**2)])  # 0.04
    who, dist = nearest_identity(np.stack([alice, bob]), np.array([0, 1]), np.stack([query, stranger]))
    assert who.tolist() == [0, 0] and dist == pytest.approx([0.01, 0.04])
    known, correct, unknown = dist[:1], who[:1] == 0, dist[1:]
    assert rates_at(0.02, known, correct, unknown) == (1.0, 0.0)
    assert rates_at(0.05, known, correct, unknown) == (1.0, 1.0)  # the stranger is named alice
    assert threshold_at_far(unknown, 0.5, known) == pytest.approx(0.025)


def test_splits_are_identity_disjoint_and_deterministic():
    labels = np.repeat(np.arange(6), 4)
    first = open_set_splits(labels, gallery_size=20, enrol=2, trials=5, seed=3)
    again = open_set_splits(labels, gallery_size=20, enrol=2, trials=5, seed=3)
    for s, t in zip(first, again, strict=True):
        assert all(np.array_equal(getattr(s, k), getattr(t, k)) for k in ("gallery", "known", "unknown"))
        enrolled = set(labels[s.gallery].tolist())
        assert len(enrolled) == 3  # capped at half the identities: the other half are strangers
        assert set(labels[s.known].tolist()) <= enrolled and not set(labels[s.unknown].tolist()) & enrolled
        assert len(s.gallery) == 6 and len(s.known) == 6 and len(s.unknown) == 12
        assert not set(s.gallery.tolist()) & set(s.known.tolist())
    assert len({tuple(labels[s.unknown].tolist()) for s in first}) > 1  # identities rotate


def test_false_alarms_grow_with_the_gallery():
    """At one threshold, strangers meet more look-alikes in a larger gallery (what the stored gallery size is for)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    emb = np.repeat(centres, 4, axis=0) + 0.3 * rng.normal(size=(160, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.repeat(np.arange(40), 4)
    small = evaluate_open_set(emb, labels, gallery_size=5, trials=20)
    large = evaluate_open_set(emb, labels, gallery_size=20, trials=20)
    threshold = small.threshold
    _, far_small = rates_at(threshold, small.known_distance, small.known_correct, small.unknown_distance)
    _, far_large = rates_at(threshold, large.known_distance, large.known_correct, large.unknown_distance)
    assert far_large > far_small
    assert large.threshold < small.threshold  # the same target FAR needs a stricter threshold
    assert far_for_gallery(0.01, 10, 10) == pytest.approx(0.01)
    assert far_for_gallery(0.01, 10, 40) == pytest.approx(1 - 0.99**4)


def test_cluster_embeddings_groups_by_the_threshold():
    a, b = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    c = np.array([0.0, 0.6, 0.8])  # squared L2 to b: 0.8
    labels = cluster_embeddings(np.stack([b, a, a, b, c, a]), threshold=0.5)
    assert labels.tolist() == [1, 0, 0, 1, 2, 0]  # numbered by size: the three a's first
    # c joins the b's (mean pair distance 0.8 < 1.0); two groups of three: the first seen is person 1
    assert cluster_embeddings(np.stack([b, a, a, b, c, a]), threshold=1.0).tolist() == [0, 1, 1, 0, 0, 1]
    assert cluster_embeddings(np.stack([a]), 0.5).tolist() == [0]


# ------------------------------------------------------------------ the stored threshold
def _embedder(tmp_path: Path, threshold: float = 1.0, open_set: float | None = 0.5, gallery: int = 20) -> Path:
    """An untrained 32-px embedding checkpoint with the given verification / 1:N thresholds."""
    cfg = compose_cfg(["task=embedding", "backbone.width=0.25", "data.image_size=32"])
    torch.manual_seed(0)
    task = build_task(cfg, EMB_INFO, training=False)
    task.threshold.fill_(threshold)
    if open_set is not None:
        task.open_set_threshold.fill_(open_set)
        task.open_set_gallery.fill_(gallery)
    return save_checkpoint(task, cfg, tmp_path / "emb.ckpt")


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_stranger_beyond_the_1n_threshold_is_unknown_though_verification_would_accept(tmp_path, monkeypatch):
    """Verification threshold 1.0, 1:N threshold 0.5: a query at 0.7 from alice's image is unknown (the
    verification threshold, used for gallery searches before, named it alice)."""
    model = mbtasks.load(_embedder(tmp_path), device="cpu")
    assert model.threshold == pytest.approx(1.0) and model.identify_threshold == pytest.approx(0.5)
    dim = int(model.task.model.dim)
    alice, bob = np.zeros(dim, np.float32), np.zeros(dim, np.float32)
    alice[0], bob[1] = 1, 1
    gallery = Gallery(["alice", "bob"], ["alice.png", "bob.png"], np.stack([alice, bob]))
    stranger = _unit([1 - 0.35] + [0] * 2 + [math.sqrt(1 - 0.65**2)] + [0] * (dim - 4))  # 2 - 2 * 0.65 = 0.7
    friend = _unit([1 - 0.1] + [0] * 2 + [math.sqrt(1 - 0.9**2)] + [0] * (dim - 4))  # 0.2 from alice
    monkeypatch.setattr(
        model,
        "embed",
        lambda images, skipped=None: (
            [type("S", (), {"name": n})() for n in ("stranger", "friend")],
            np.stack([stranger, friend]),
        ),
    )
    found = model.identify(["x", "y"], gallery)
    assert [f.distance for f in found] == pytest.approx([0.7, 0.2], abs=1e-5)
    assert found[0].identity == "unknown" and found[0].nearest == "alice" and not found[0].match
    assert found[1].identity == "alice" and found[1].match
    # the same through the Pipeline's matching step, and an explicit override
    det = _detector(tmp_path)
    pipeline = Pipeline(det, model)
    monkeypatch.setattr(pipeline, "crops", lambda image, boxes: np.stack([stranger, friend]))
    faces = pipeline.embed_boxes(np.zeros((8, 8, 3), np.uint8), np.zeros((2, 4)), np.ones(2), gallery)
    assert [f.identity for f in faces] == ["unknown", "alice"]
    loose = Pipeline(det, model, identify_threshold=1.0)
    monkeypatch.setattr(loose, "crops", lambda image, boxes: np.stack([stranger, friend]))
    assert [
        f.identity for f in loose.embed_boxes(np.zeros((8, 8, 3), np.uint8), np.zeros((2, 4)), np.ones(2), gallery)
    ] == ["alice", "alice"]
    with pytest.raises(ConfigError, match="predict.identify_threshold=7.0"):
        Pipeline(det, model, identify_threshold=7.0)


def test_old_checkpoint_falls_back_to_the_verification_threshold_with_a_warning(caplog):
    model = mbtasks.load(LEGACY / "embedding-format1.ckpt", device="cpu")
    assert float(model.task.open_set_threshold) == -1  # loads although its state dict lacks the buffer
    with caplog.at_level(logging.WARNING):
        threshold = model.identify_threshold
    assert threshold == model.threshold and model.threshold_source == "verification"
    assert "no 1:N (open-set) threshold" in caplog.text and "verification threshold" in caplog.text


def test_large_gallery_is_warned(tmp_path, caplog):
    model = mbtasks.load(_embedder(tmp_path, gallery=2), device="cpu")
    images = {f"p{i}": [np.full((32, 32, 3), 20 * i, np.uint8)] for i in range(5)}
    with caplog.at_level(logging.WARNING):
        model.gallery(images)
    assert "the gallery holds 5 identities" in caplog.text and "chosen for 2" in caplog.text


def test_training_stores_the_1n_threshold_and_reports_dir(tmp_path):
    data = tmp_path / "data"
    metrics = run_mode(tiny_overrides(data), tmp_path / "run")
    for split in ("val", "test"):
        for far in (0.01, 0.1):
            assert f"{split}/{dir_key(far)}" in metrics
    assert metrics["val/dir_at_far_0.1"] is None or 0 <= metrics["val/dir_at_far_0.1"] <= 1
    assert 0 <= metrics["test/open_set_far"] <= 1 and 0 <= metrics["test/dir_at_threshold"] <= 1
    model = mbtasks.load(tmp_path / "run" / "checkpoints" / "best.ckpt", device="cpu")
    assert model.threshold_source == "open_set"
    assert model.identify_threshold == pytest.approx(metrics["test/open_set_threshold"])
    assert model.open_set_gallery_size == 1  # 3 validation identities: 1 enrolled, 2 strangers per trial
    with pytest.raises(ConfigError, match="task.open_set_far=1.5"):
        build_task(compose_cfg([*tiny_overrides(data), "task.open_set_far=1.5"]), EMB_INFO)


# ------------------------------------------------------------------ one source for the chain's settings
def _detector(tmp_path: Path) -> Path:
    """An untrained 64-px one-class detector whose scores spread around 0.5 (noise in the class heads)."""
    path = tmp_path / "det.ckpt"
    if path.exists():
        return path
    cfg = compose_cfg(["task=detection", "backbone.width=0.25", "data.image_size=64"])
    torch.manual_seed(0)
    task = build_task(
        cfg,
        {"class_names": ["face"], "image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "category_ids": [1]},
        training=False,
    )
    with torch.no_grad():
        for name, p in task.named_parameters():
            if "cls_heads" in name:
                p.normal_(0, 0.3)
    return save_checkpoint(task, cfg, path)


def test_cli_and_pipeline_give_the_same_answer_with_their_defaults(tmp_path):
    """Before: the CLI kept detections scoring >= 0.3 (conf/config.yaml) and Pipeline(...) >= 0.5."""
    det, emb = _detector(tmp_path), _embedder(tmp_path)
    rng = np.random.default_rng(0)
    photos, gallery = tmp_path / "photos", tmp_path / "gallery"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    for name in ("ann", "bob"):
        (gallery / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(gallery / name / "a.png")
    scores = np.concatenate([d.scores for d in mbtasks.load(det, device="cpu").predict(sorted(photos.iterdir()))])
    assert ((scores >= 0.3) & (scores < 0.5)).any()  # the two old defaults disagree on these photos
    run_mode(
        [
            "task=embedding",
            "mode=predict",
            f"ckpt_path={emb}",
            f"predict.detector={det}",
            f"predict.input={photos}",
            f"predict.gallery={gallery}",
        ],
        tmp_path / "cli",
    )
    written = json.loads((tmp_path / "cli" / "identities.json").read_text())
    pipeline = Pipeline(det, emb, device="cpu")
    found = [p.to_dict() for p in pipeline.identify(sorted(photos.iterdir()), gallery)]
    assert found == written["photos"] and sum(len(p["faces"]) for p in found)
    cfg = compose_cfg(["task=embedding"])  # the chain's keys are embedding's own
    assert pipeline.score_threshold == written["score_threshold"] == cfg.predict.score_threshold
    assert pipeline.margin == written["crop_margin"] == cfg.predict.crop_margin
    assert pipeline.identify_threshold == written["threshold"] == pytest.approx(0.5)
    assert written["threshold_source"] == "open_set" and written["verification_threshold"] == pytest.approx(1.0)
    assert pipeline_defaults() == {
        "margin": cfg.predict.crop_margin,
        "square": cfg.predict.crop_square,
        "score_threshold": cfg.predict.score_threshold,
        "classes": None,
        "identify_threshold": None,
    }
    for face in (f for p in written["photos"] for f in p["faces"]):
        assert face["match"] == (face["distance"] <= 0.5)
    # a key given on the command line and the same argument to Pipeline still agree
    run_mode(
        [
            "task=embedding",
            "mode=predict",
            f"ckpt_path={emb}",
            f"predict.detector={det}",
            f"predict.input={photos}",
            f"predict.gallery={gallery}",
            "predict.score_threshold=0.55",
            "predict.identify_threshold=1.5",
        ],
        tmp_path / "cli2",
    )
    written = json.loads((tmp_path / "cli2" / "identities.json").read_text())
    strict = Pipeline(det, emb, score_threshold=0.55, identify_threshold=1.5, device="cpu")
    assert [p.to_dict() for p in strict.identify(sorted(photos.iterdir()), gallery)] == written["photos"]
    assert written["threshold_source"] == "predict.identify_threshold" and written["threshold"] == 1.5


def test_pipeline_warns_about_useless_models_and_clusters(tmp_path, caplog):
    """Health warnings stored in a checkpoint are summed up by the Pipeline and written to identities.json;
    a detector returning its maximum on every photo 'finds everything'."""
    from mbtasks import checkpoint as ckpt_format
    from mbtasks.tasks.health import HealthWarning, to_checkpoint

    emb = _embedder(tmp_path)
    ckpt = torch.load(emb, weights_only=True)
    to_checkpoint(ckpt, [HealthWarning("tiny_threshold", "the verification threshold 0.00017 is tiny")])
    assert ckpt[ckpt_format.KEY]["health"]
    torch.save(ckpt, emb)
    det = _detector(tmp_path)
    with caplog.at_level(logging.WARNING):
        pipeline = Pipeline(det, emb, score_threshold=0.0, device="cpu")
    assert "embedder: tiny_threshold" in caplog.text and any("tiny_threshold" in w for w in pipeline.warnings)
    photo = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pipeline.detector.task.model.max_detections = 5
    groups = pipeline.cluster([photo, photo])
    assert any("detector_found_everything" in w for w in pipeline.photo_warnings)
    faces = [f for p in groups for f in p.faces]
    assert len(faces) == 10 and all(f.identity.startswith("person_") for f in faces)
    # the same crop in both photos lands in the same group
    assert [f.identity for f in groups[0].faces] == [f.identity for f in groups[1].faces]
    nothing = Pipeline(det, emb, score_threshold=0.99, device="cpu")
    assert nothing.identify([photo], {"ann": [photo]})[0].faces == [] and not nothing.photo_warnings  # one photo
    assert all(p.faces == [] for p in nothing.identify([photo, photo], {"ann": [photo]}))
    assert any("detector_found_nothing" in w for w in nothing.photo_warnings)


def test_export_metadata_carries_both_thresholds():
    from mbtasks.tasks import build_task
    from mbtasks.tasks.embedding.export import thresholds
    from tests.conftest import compose_cfg
    from tests.test_margin_losses import INFO

    task = build_task(compose_cfg(["task=embedding", "backbone.width=0.25", "data.image_size=32"]), INFO)
    assert thresholds(task) == {"verification": 1.0}  # no 1:N threshold stored (an old checkpoint)
    task.threshold.fill_(0.9)
    task.open_set_threshold.fill_(0.5)
    task.open_set_gallery.fill_(20)
    assert thresholds(task) == {"verification": pytest.approx(0.9), "identification": 0.5, "identification_gallery": 20}
