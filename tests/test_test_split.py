"""Without a test split the "test" metrics come from val (which picked best.ckpt): said loudly and in metrics.json."""

from __future__ import annotations

import json
import logging
import shutil

from tests.conftest import run_mode

TINY = [
    "data.generator=null",
    "data.image_size=32",
    "data.batch_size=8",
    "backbone.width=0.25",
    "trainer.max_epochs=1",
    "task.log_images=0",
]


def test_imagefolder_without_test_folder_says_test_is_val(tiny_shapes, tmp_path, caplog):
    root = tmp_path / "shapes"
    shutil.copytree(tiny_shapes, root)
    shutil.rmtree(root / "test")
    with caplog.at_level(logging.WARNING):
        metrics = run_mode([f"data.root={root}", *TINY], tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/split"] == on_disk["test/split"] == "val"
    assert "NO TEST SPLIT" in caplog.text and str(root) in caplog.text
    tested = run_mode(["mode=test", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}"], tmp_path / "test")
    assert tested["test/split"] == "val"


def test_imagefolder_with_test_folder_says_test(tiny_shapes, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        metrics = run_mode([f"data.root={tiny_shapes}", *TINY], tmp_path / "run")
    assert metrics["test/split"] == "test"
    assert "NO TEST SPLIT" not in caplog.text


def test_detection_without_test_annotations_says_test_is_val(tmp_path):
    from mbtasks.data.coco import CocoDataModule
    from mbtasks.data.synthetic.shapes import make_shapes_detection

    root = make_shapes_detection(
        tmp_path / "det",
        classes=["circle", "square"],
        train_images=4,
        val_images=2,
        test_images=2,
        image_size=64,
        seed=0,
    )
    kw = dict(
        root=str(root),
        train_ann="annotations/instances_train.json",
        train_images="train",
        val_ann="annotations/instances_val.json",
        val_images="val",
        image_size=64,
        num_workers=0,
    )
    no_test = CocoDataModule(**kw)
    no_test.setup()
    assert no_test.test_split == "val"
    with_test = CocoDataModule(**kw, test_ann="annotations/instances_test.json", test_images="test")
    with_test.setup()
    assert with_test.test_split == "test"
