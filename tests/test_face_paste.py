"""Copy-paste face scenes (mbtasks/data/face_paste.py) on generated face photos and backgrounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mbtasks.data.face_paste import FacePasteDataModule, PasteSettings, compose_scene, find_images
from mbtasks.errors import ConfigError, DataError
from tests.conftest import compose_cfg, run_mode


def write_sets(root: Path, faces: int = 4, backgrounds: int = 3) -> tuple[Path, Path]:
    """Grey 23x28 "face photos" in identity folders and 80x60 colour backgrounds."""
    rng = np.random.default_rng(0)
    for i in range(faces):
        folder = root / "faces" / f"s{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(60, 250, (28, 23), dtype=np.uint8), "L").save(folder / f"{i}.pgm")
    (root / "bg").mkdir(parents=True, exist_ok=True)
    for i in range(backgrounds):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / "bg" / f"{i}.jpg")
    return root / "faces", root / "bg"


def write_dlib(root: Path) -> Path:
    """A dlib imglab root: 2 training photos and 1 test photo, one 20 px face box each."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (100, 80), (90, 120, 150)).save(root / name)
    box = "<box top='10' left='20' width='20' height='20'/>"
    for xml, names in (("training.xml", ("a.jpg", "b.jpg")), ("testing.xml", ("c.jpg",))):
        images = "".join(f"<image file='{n}'>{box}</image>" for n in names)
        (root / xml).write_text(f"<dataset><images>{images}</images></dataset>")
    return root


def resize_pipelines(side: int) -> dict:
    import albumentations as A

    box_params = A.BboxParams(format="pascal_voc", label_fields=["labels"])
    return {
        "train_transforms": A.Compose([A.Resize(side, side)], bbox_params=box_params),
        "eval_transforms": A.Compose([A.Resize(side, side)]),
    }


def test_pasted_box_is_the_face_box_part_of_the_pasted_photo():
    """One white face photo, hard-edged, on a black scene: the box is face_box of the lit rectangle."""
    face_box = (0.2, 0.3, 0.8, 0.9)
    settings = PasteSettings(
        scene_size=(96, 96), faces_per_scene=(1, 1), face_size=(12, 40), face_box=face_box, feather=0.0, color_match=0.0
    )
    white = np.full((50, 40, 3), 255, np.uint8)
    black = np.zeros((70, 70, 3), np.uint8)
    for seed in range(8):
        scene, boxes = compose_scene(
            np.random.default_rng(seed),
            [Path("f")],
            [Path("b")],
            settings,
            read=lambda p: white if str(p) == "f" else black,
        )
        ys, xs = np.nonzero(scene.max(axis=2))
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        assert boxes.shape == (1, 4)
        pw, ph = x1 - x0, y1 - y0
        expected = [x0 + face_box[0] * pw, y0 + face_box[1] * ph, x0 + face_box[2] * pw, y0 + face_box[3] * ph]
        # the photo may stick out of the scene (cut), the box never does
        if x0 > 0 and y0 > 0 and x1 < 96 and y1 < 96:
            np.testing.assert_allclose(boxes[0], expected, atol=1.0)
        assert (boxes[0, :2] >= 0).all() and (boxes[0, 2:] <= 96).all()
        assert x0 <= boxes[0, 0] and boxes[0, 2] <= x1 and y0 <= boxes[0, 1] and boxes[0, 3] <= y1


def test_counts_and_sizes_in_range_and_grey_faces_tinted(tmp_path):
    faces, bgs = write_sets(tmp_path)
    settings = PasteSettings(scene_size=(64, 96), faces_per_scene=(2, 4), face_size=(10, 30), max_cover=1.0)
    files_f, files_b = find_images(faces, "data.faces"), find_images(bgs, "data.backgrounds")
    assert len(files_f) == 4 and len(files_b) == 3
    counts, widths, sides = [], [], []
    for seed in range(20):
        scene, boxes = compose_scene(np.random.default_rng(seed), files_f, files_b, settings)
        sides.append(scene.shape[0])
        assert scene.shape[0] == scene.shape[1] and scene.shape[2] == 3 and scene.dtype == np.uint8
        counts.append(len(boxes))
        widths.extend(boxes[:, 2] - boxes[:, 0])
        assert (boxes >= 0).all() and (boxes <= scene.shape[0]).all()
    assert set(counts) <= {2, 3, 4} and len(set(counts)) > 1
    assert 64 <= min(sides) and max(sides) <= 96
    # widths: log-uniform in [10, 30], off by the photo's pixel rounding only
    assert 9 <= min(widths) and max(widths) <= 31
    # a grey face photo comes out coloured
    white = np.full((28, 23, 3), 200, np.uint8)
    scene, boxes = compose_scene(
        np.random.default_rng(0),
        [Path("f")],
        [Path("b")],
        PasteSettings(scene_size=(64, 64), faces_per_scene=(1, 1), face_size=(20, 20), feather=0.0, color_match=0.0),
        read=lambda p: white if str(p) == "f" else np.zeros((64, 64, 3), np.uint8),
    )
    x0, y0, x1, y1 = boxes[0].astype(int)
    patch = scene[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(-1, 3).astype(int)
    assert (patch[:, 0] > patch[:, 2]).all()


def test_deterministic_with_a_seed(tmp_path):
    faces, bgs = write_sets(tmp_path)
    files_f, files_b = find_images(faces, "data.faces"), find_images(bgs, "data.backgrounds")
    a = compose_scene(np.random.default_rng(5), files_f, files_b, PasteSettings(scene_size=(64, 64), face_size=(8, 30)))
    b = compose_scene(np.random.default_rng(5), files_f, files_b, PasteSettings(scene_size=(64, 64), face_size=(8, 30)))
    c = compose_scene(np.random.default_rng(6), files_f, files_b, PasteSettings(scene_size=(64, 64), face_size=(8, 30)))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # the data module's val scenes are fixed: the same item twice, and in a fresh module
    kwargs = {
        "faces": str(faces),
        "backgrounds": str(bgs),
        "scenes_per_epoch": 4,
        "val_scenes": 3,
        "test_scenes": 2,
        "scene_size": [64, 64],
        "face_size": [8, 30],
        "image_size": 64,
        "num_workers": 0,
        **resize_pipelines(64),
    }
    dm = FacePasteDataModule(**kwargs)
    dm.setup()
    x1, t1 = dm.datasets["val"][1]
    x2, _ = dm.datasets["val"][1]
    other = FacePasteDataModule(**kwargs)
    other.setup()
    x3, t3 = other.datasets["val"][1]
    assert x1.shape == (3, 64, 64) and torch_equal(x1, x2) and torch_equal(x1, x3)
    assert torch_equal(t1["boxes"], t3["boxes"]) and len(t1["gt_boxes"]) == len(t1["boxes"])
    assert len(dm.datasets["train"]) == 4 and len(dm.datasets["val"]) == 3 and len(dm.datasets["test"]) == 2


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_mixed_with_real_photos_splits(tmp_path):
    faces, bgs = write_sets(tmp_path)
    real = write_dlib(tmp_path / "dlib")
    dm = FacePasteDataModule(
        str(faces),
        [str(bgs)],
        real=str(real),
        scenes_per_epoch=5,
        real_repeat=3,
        val="pasted",
        val_scenes=2,
        scene_size=[64, 64],
        face_size=[8, 30],
        image_size=64,
        num_workers=0,
        **resize_pipelines(64),
    )
    dm.setup()
    train, val, test = dm.datasets["train"], dm.datasets["val"], dm.datasets["test"]
    assert len(train) == 5 + 2 * 3 and len(val) == 2
    # the real test file, never pasted scenes, when data.real is given
    assert len(test) == 1 and test.scenes == 0 and test.records[0].path.name == "c.jpg"
    _, target = train[5]  # a real photo after the scenes
    assert len(target["boxes"]) == 1
    assert dm.info["class_names"] == ["face"]
    held = FacePasteDataModule(
        str(faces),
        str(bgs),
        real=str(real),
        val_fraction=0.5,
        scene_size=[64, 64],
        face_size=[8, 30],
        image_size=64,
        num_workers=0,
        **resize_pipelines(64),
    )
    held.setup()
    assert len(held.datasets["val"].records) == 1 and held.datasets["val"].scenes == 0
    assert len(held.datasets["train"].records) == 1


def test_bad_settings_name_the_key(tmp_path):
    faces, bgs = write_sets(tmp_path)
    with pytest.raises(ConfigError, match="data.face_size"):
        FacePasteDataModule(str(faces), str(bgs), face_size=[2, 30])
    with pytest.raises(ConfigError, match="data.face_box"):
        FacePasteDataModule(str(faces), str(bgs), face_box=[0.5, 0.2, 0.4, 0.9])
    with pytest.raises(ConfigError, match="data.val=real needs data.real"):
        FacePasteDataModule(str(faces), str(bgs), val="real")
    with pytest.raises(DataError, match="data.backgrounds=.*no image files"):
        (tmp_path / "empty").mkdir()
        FacePasteDataModule(str(faces), str(tmp_path / "empty")).setup()


def test_two_step_detection_train_through_the_cli(tmp_path):
    faces, bgs = write_sets(tmp_path)
    real = write_dlib(tmp_path / "dlib")
    data = [
        "data=face_paste",
        f"data.faces={faces}",
        f"data.backgrounds={bgs}",
        f"data.real={real}",
        "data.val=pasted",
        "data.scenes_per_epoch=6",
        "data.val_scenes=2",
        "data.real_repeat=1",
        "data.scene_size=[64,80]",
        "data.face_size=[10,40]",
        "data.image_size=64",
        "data.batch_size=4",
    ]
    metrics = run_mode(
        [
            "task=detection",
            *data,
            "backbone.width=0.25",
            "trainer.limit_train_batches=2",
            "trainer.max_epochs=1",
            "task.log_images=0",
        ],
        tmp_path / "run",
    )
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    flat = json.dumps(saved)
    # the test split is the real testing.xml: WIDER-style AP beside COCO's
    assert "test/map_50" in flat and "test/wider_ap_all" in flat and metrics


def test_face_detector_recipe_composes(tmp_path):
    from mbtasks.config import validate

    cfg = compose_cfg(
        [
            "experiment=face_detector_photos",
            f"data.faces={tmp_path}",
            f"data.backgrounds=[{tmp_path}]",
            f"data.real={tmp_path / 'dlib_faces'}",
        ]
    )
    validate(cfg)
    assert cfg.data._target_.endswith("FacePasteDataModule") and cfg.head.anchors.aspect_ratios == [[]]
    assert cfg.head.anchors.min_ratio * cfg.data.image_size == pytest.approx(16)
    assert cfg.backbone._target_.endswith("MobileNetV2") and cfg.backbone.width == 1.0
    assert cfg.data.real.endswith("dlib_faces") and cfg.data.test_xml == "testing.xml"
