"""Photos in, identities out: the synthetic face scenes, the detect-then-embed Pipeline, its CLI and its measurement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mbtasks
from mbtasks.data.synthetic.face_scenes import make_face_scenes
from mbtasks.errors import ConfigError
from mbtasks.tasks.embedding.identify import crop_boxes
from mbtasks.tasks.embedding.identify_eval import evaluate_on_coco
from mbtasks.tasks.embedding.results import Face, PhotoIdentities
from tests.conftest import run_mode
from tests.test_embedding_cli import tiny_overrides as tiny_embedding

SCENES = {
    "train_images": 8,
    "val_images": 3,
    "test_images": 4,
    "image_size": 64,
    "train_identities": 4,
    "eval_identities": 3,
    "gallery_images": 2,
    "gallery_size": 32,
    "max_faces": 3,
    "face_size": [0.25, 0.5],
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny face detector trained on tiny scenes and a tiny embedder (neither learns much: the wiring is tested)."""
    base = tmp_path_factory.mktemp("faces")
    scenes = base / "data" / "synthetic_face_scenes"
    det = [
        f"data_dir={base / 'data'}",
        "task=detection",
        "data=synthetic_face_scenes",
        "data.image_size=64",
        "data.batch_size=4",
        *(f"data.generator.{k}={v}" for k, v in SCENES.items() if k != "face_size"),
        "data.generator.face_size=[0.25,0.5]",
        "backbone.width=0.25",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "task.log_images=0",
    ]
    run_mode(det, base / "det")
    run_mode(tiny_embedding(base / "data"), base / "emb")
    return {
        "scenes": scenes,
        "detector": base / "det" / "checkpoints" / "best.ckpt",
        "embedder": base / "emb" / "checkpoints" / "best.ckpt",
        "base": base,
    }


def test_scene_set_is_coco_with_identities_and_a_gallery(chain):
    scenes = chain["scenes"]
    test = json.loads((scenes / "annotations" / "instances_test.json").read_text())
    train = json.loads((scenes / "annotations" / "instances_train.json").read_text())
    assert test["categories"] == [{"id": 1, "name": "face", "supercategory": "person"}]
    assert len(test["images"]) == 4 and test["annotations"]
    gallery = {p.name for p in (scenes / "gallery").iterdir()}
    assert len(gallery) == 3 and all(len(list((scenes / "gallery" / g).iterdir())) == 2 for g in gallery)
    assert {a["identity"] for a in test["annotations"]} <= gallery  # test faces are enrolled
    assert not {a["identity"] for a in train["annotations"]} & gallery  # training scenes use other people
    for a in test["annotations"]:
        x, y, w, h = a["bbox"]
        assert w == h and 16 <= w <= 32 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
    marker = (scenes / ".complete").stat().st_mtime_ns
    make_face_scenes(scenes, **SCENES)  # same parameters: nothing rewritten
    assert (scenes / ".complete").stat().st_mtime_ns == marker


def test_crop_boxes_square_margin_and_outside_black():
    image = np.full((50, 80, 3), 200, np.uint8)
    plain, wide, edge = crop_boxes(image, np.array([[10, 10, 30, 20], [10, 10, 30, 20], [70, 40, 90, 60]]), 0.0)
    assert plain.shape == (20, 20, 3)
    assert crop_boxes(image, np.array([[10, 10, 30, 20]]), 0.5)[0].shape == (40, 40, 3)
    assert crop_boxes(image, np.array([[10, 10, 30, 20]]), 0.0, square=False)[0].shape == (10, 20, 3)
    assert edge.shape == (20, 20, 3) and edge[-1, -1].sum() == 0 and edge[0, 0].sum() == 600


def test_cli_and_python_pipeline_agree(chain, tmp_path):
    scenes, out = chain["scenes"], tmp_path / "predict"
    result = run_mode(
        [
            "task=embedding",
            "mode=predict",
            f"ckpt_path={chain['embedder']}",
            f"predict.detector={chain['detector']}",
            f"predict.input={scenes / 'test'}",
            f"predict.gallery={scenes / 'gallery'}",
            "predict.score_threshold=0.0",
        ],
        out,
    )
    written = json.loads((out / "identities.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert [Path(p["file"]).name for p in written["photos"]] == [f"{i:05d}.png" for i in range(4)]
    gallery = {p.name for p in (scenes / "gallery").iterdir()}
    faces = [f for p in written["photos"] for f in p["faces"]]
    assert faces  # score >= 0: every kept detection is identified
    for f in faces:
        assert set(f) == {"box", "score", "identity", "nearest", "distance", "match"}
        assert f["nearest"] in gallery and f["match"] == (f["distance"] <= written["threshold"])
        assert f["identity"] == (f["nearest"] if f["match"] else "unknown")
        assert 0 <= f["box"][0] <= f["box"][2] <= 64.01 and 0 <= f["box"][1] <= f["box"][3] <= 64.01
    assert sorted(p.name for p in (out / "drawn").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    assert Image.open(out / "drawn" / "00000.png").size == (64, 64)
    # the same through the Python API
    pipeline = mbtasks.Pipeline(chain["detector"], chain["embedder"], score_threshold=0.0)
    photos = pipeline.identify(sorted((scenes / "test").iterdir()), scenes / "gallery")
    assert [p.to_dict() for p in photos] == written["photos"]


def test_pipeline_refuses_wrong_checkpoints_and_missing_gallery(chain, tmp_path):
    scenes = chain["scenes"]
    with pytest.raises(ConfigError, match="expected a detection checkpoint"):
        mbtasks.Pipeline(chain["embedder"], chain["embedder"])
    with pytest.raises(ConfigError, match="predict.detector needs an embedding checkpoint"):
        mbtasks.Pipeline(chain["detector"], chain["detector"])
    # predict.detector is embedding's own key: with a detection checkpoint it is not a key at all
    with pytest.raises(ConfigError, match=r"unknown key \['predict.detector'\]"):
        run_mode(
            [
                "task=detection",
                "mode=predict",
                f"ckpt_path={chain['detector']}",
                f"+predict.detector={chain['detector']}",
                f"predict.input={scenes / 'test'}",
            ],
            tmp_path / "a",
        )
    with pytest.raises(ConfigError, match="needs predict.gallery"):
        run_mode(
            [
                "task=embedding",
                "mode=predict",
                f"ckpt_path={chain['embedder']}",
                f"predict.detector={chain['detector']}",
                f"predict.input={scenes / 'test'}",
            ],
            tmp_path / "b",
        )
    with pytest.raises(ConfigError, match="the detector has no class \\['person'\\]"):
        mbtasks.Pipeline(chain["detector"], chain["embedder"], classes=["person"])


def test_evaluation_matches_boxes_and_counts(chain, monkeypatch):
    """With a detector that returns the ground truth, recall is 1 and the chain equals the ground-truth crops."""
    scenes = chain["scenes"]
    pipeline = mbtasks.Pipeline(chain["detector"], chain["embedder"], score_threshold=0.0)
    coco = json.loads((scenes / "annotations" / "instances_test.json").read_text())
    names = {i["id"]: i["file_name"] for i in coco["images"]}
    boxes: dict[str, list] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        boxes.setdefault(names[a["image_id"]], []).append([x, y, x + w, y + h])
    real = pipeline.embed_boxes

    def perfect(photos, gallery, skipped=None):
        (path,) = photos
        image = np.asarray(Image.open(path).convert("RGB"))
        found = np.array(boxes.get(Path(path).name, []), np.float32).reshape(-1, 4)
        return [PhotoIdentities(str(path), real(image, found, np.ones(len(found)), pipeline.embedder.gallery(gallery)))]

    monkeypatch.setattr(pipeline, "identify", perfect)
    m = evaluate_on_coco(pipeline, scenes / "annotations" / "instances_test.json", scenes / "test", scenes / "gallery")
    assert m["faces"] == len(coco["annotations"]) and m["detection_recall"] == 1.0 and m["false_detections"] == 0
    assert m["chain_accuracy"] == pytest.approx(m["gt_crop_accuracy"])
    assert m["chain_accuracy_at_threshold"] == pytest.approx(m["gt_crop_accuracy_at_threshold"])
    # one extra box far from every face: a false detection, recall unchanged
    monkeypatch.setattr(
        pipeline,
        "identify",
        lambda photos, gallery, skipped=None: [
            PhotoIdentities(
                str(photos[0]),
                [*perfect(photos, gallery)[0].faces, Face([0, 0, 2, 2], 0.99, "unknown", 4.0, False, "x")],
            )
        ],
    )
    m2 = evaluate_on_coco(pipeline, scenes / "annotations" / "instances_test.json", scenes / "test", scenes / "gallery")
    assert m2["detection_recall"] == 1.0 and m2["false_detections"] == len(coco["images"])


def test_face_detector_recipe_composes():
    from mbtasks.config import validate
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["experiment=face_detector"])
    validate(cfg)
    assert cfg.data.generator._target_.endswith("make_face_scenes") and cfg.head.anchors.aspect_ratios == [[]]
