"""The Python API through its public names only: mbtasks.train / test / load, typed results, export, profile."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mbtasks
from mbtasks.errors import DataError
from mbtasks.results import Classification, Detections, Embedding, Identity, Verification
from tests.conftest import is_fraction_of

QUIET = ["trainer.enable_progress_bar=false", "data.num_workers=0", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from mbtasks.data.synthetic.shapes import make_shapes_classification

    root = make_shapes_classification(
        tmp_path_factory.mktemp("shapes"),
        classes=["circle", "square", "triangle"],
        train_per_class=6,
        val_per_class=2,
        test_per_class=2,
        image_size=32,
        seed=1,
    )
    run = mbtasks.train(
        "classification",
        [
            *QUIET,
            f"data.root={root}",
            "data.generator=null",
            "data.image_size=32",
            "data.batch_size=6",
            "backbone.width=0.25",
            "trainer.max_epochs=1",
            "task.log_images=0",
        ],
        run_dir=tmp_path_factory.mktemp("run") / "cls",
    )
    return root, run


def test_train_returns_metrics_run_dir_and_checkpoint(classifier):
    _, run = classifier
    saved = json.loads((run.run_dir / "metrics.json").read_text())
    assert run.metrics["warnings"] == saved.pop("warnings")  # a list: pytest.approx takes numbers only
    assert {k: v for k, v in run.metrics.items() if k != "warnings"} == pytest.approx(saved)
    root, _ = classifier
    assert is_fraction_of(run.metrics["test/acc_top1"], len(list((root / "test").rglob("*.png"))))
    assert run.best_checkpoint == run.run_dir / "checkpoints" / "best.ckpt" and run.best_checkpoint.is_file()


def test_test_reevaluates_like_the_cli(classifier, tmp_path):
    _, run = classifier
    tested = mbtasks.test(run.best_checkpoint, QUIET, run_dir=tmp_path / "test")
    assert tested.metrics["test/acc_top1"] == pytest.approx(run.metrics["test/acc_top1"], abs=1e-6)
    assert tested.best_checkpoint is None and (tmp_path / "test" / "metrics.json").is_file()


def test_predict_takes_every_input_kind_and_matches_the_cli(classifier, tmp_path):
    root, run = classifier
    model = mbtasks.load(run.best_checkpoint, device="cpu")
    path = sorted((root / "test" / "circle").iterdir())[0]
    pixels = np.array(Image.open(path).convert("RGB"))
    by_path = model.predict(path)
    assert len(by_path) == 1 and isinstance(by_path[0], Classification)
    assert by_path[0].label in ("circle", "square", "triangle") and len(by_path[0].top_k) == 3
    assert by_path[0].top_k[0].label == by_path[0].label
    same = [
        model.predict(x)[0]
        for x in (Image.open(path), pixels, pixels.astype(np.float32) / 255, torch.from_numpy(pixels).permute(2, 0, 1))
    ]
    for r in same:
        assert r.label == by_path[0].label and r.score == pytest.approx(by_path[0].score, abs=1e-5)
    assert len(model.predict([path, pixels, np.stack([pixels, pixels])])) == 4
    folder = model.predict(root / "test")
    assert len(folder) == 6 and all(isinstance(r, Classification) for r in folder)
    # mode=predict runs the same predictor: same labels and scores
    cli = mbtasks.api.run(
        ["mode=predict", f"ckpt_path={run.best_checkpoint}", f"predict.input={root / 'test'}"], tmp_path / "predict"
    ).metrics
    assert [p["file"] for p in cli["predictions"]] == [r.source for r in folder]
    assert [p["score"] for p in cli["predictions"]] == pytest.approx([r.score for r in folder], abs=1e-5)


def test_bad_inputs_say_what_was_expected(classifier, tmp_path):
    _, run = classifier
    model = mbtasks.load(run.best_checkpoint)
    with pytest.raises(DataError, match="expected an \\(H, W, 3\\) image array"):
        model.predict(np.zeros((4, 4, 7), np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    with pytest.raises(DataError, match="broken.png"):
        model.predict(broken)
    skipped: dict[str, str] = {}
    assert model.predict([broken], skipped=skipped) == [] and str(broken) in skipped
    with pytest.raises(AttributeError, match="'verify': .* is a classification model, which has no verify"):
        model.verify(broken, broken)


def test_export_and_profile(classifier, tmp_path):
    _, run = classifier
    model = mbtasks.load(run.best_checkpoint)
    out = model.export("torchscript", tmp_path / "model.pt")
    assert (tmp_path / "model.pt").is_file() and out["path"] == str(tmp_path / "model.pt")
    assert json.loads((tmp_path / "model.json").read_text())["task"] == "classification"
    profile = model.profile(repeats=2, warmup=1)
    assert profile["params"] > 10_000 and profile["mult_adds"] > 0 and profile["latency_ms"] > 0
    assert profile["image_size"] == 32


def test_detection_results_are_in_original_pixels_and_draw(tmp_path):
    run = mbtasks.train(
        "detection",
        [
            *QUIET,
            f"data.root={tmp_path / 'det'}",
            "data.image_size=64",
            "data.batch_size=4",
            "data.generator.classes=[circle,square]",
            "data.generator.train_images=8",
            "data.generator.val_images=4",
            "data.generator.test_images=4",
            "data.generator.image_size=64",
            "backbone.width=0.25",
            "trainer.max_epochs=1",
            "task.log_images=0",
            "task.score_threshold=0.0",
        ],
        run_dir=tmp_path / "run",
    )
    model = mbtasks.load(run.best_checkpoint)
    photo = np.asarray(Image.open(tmp_path / "det" / "test" / "00000.png").convert("RGB").resize((160, 96)))
    (det,) = model.predict(photo)
    assert isinstance(det, Detections) and det.boxes.shape == (len(det), 4) and len(det) > 0
    assert det.boxes[:, [0, 2]].max() <= 160.01 and det.boxes[:, [1, 3]].max() <= 96.01
    assert np.all(np.diff(det.scores) <= 1e-6) and set(det.names) <= {"circle", "square"}
    assert det.draw(score_threshold=0.0).size == (160, 96)
    assert Image.open(det.save(tmp_path / "drawn.png")).size == (160, 96)


def test_embedding_verify_and_identify(tmp_path):
    from mbtasks.data.synthetic.faces import make_synthetic_faces

    gen = {"num_identities": 10, "images_per_identity": 4, "image_size": 32, "seed": 0}
    root = make_synthetic_faces(tmp_path / "data" / "synthetic_faces", **gen)
    run = mbtasks.train(
        "embedding",
        [
            *QUIET,
            f"data_dir={tmp_path / 'data'}",
            "backbone.width=0.25",
            "data.image_size=32",
            *(f"data.generator.{k}={v}" for k, v in gen.items()),
            "data.val_identities=2",
            "data.test_identities=2",
            "data.identities_per_batch=4",
            "data.images_per_identity=2",
            "data.num_folds=2",
            "data.pairs_per_fold=4",
            "trainer.max_epochs=1",
            "task.projector_identities=0",
        ],
        run_dir=tmp_path / "run",
    )
    model = mbtasks.load(run.best_checkpoint)
    a, b = root / "id_00000" / "id_00000_0001.png", root / "id_00001" / "id_00001_0001.png"
    (emb,) = model.predict(a)
    assert isinstance(emb, Embedding) and emb.vector.shape == (128,)
    assert np.linalg.norm(emb.vector) == pytest.approx(1.0, abs=1e-5)
    check = model.verify(a, a)
    assert isinstance(check, Verification) and check.same and check.distance == pytest.approx(0, abs=1e-5)
    assert check.threshold == pytest.approx(run.metrics["val/threshold"], rel=1e-5)
    gallery = {"alice": [a], "bob": [Image.open(b)]}
    found = model.identify([a, b], gallery)
    assert all(isinstance(r, Identity) for r in found)
    assert [r.identity for r in found] == ["alice", "bob"] and all(r.match for r in found)
    assert model.identify([a], model.gallery(gallery))[0].nearest == "alice"
