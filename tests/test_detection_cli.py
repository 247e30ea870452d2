"""Detection through the real CLI: config composition, train -> test -> predict, profile, COCO recipes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from PIL import Image

from mbtasks.data.synthetic.shapes import make_shapes_detection
from mbtasks.errors import ConfigError
from tests.conftest import compose_cfg, run_mode

CLASSES = ["circle", "square", "triangle"]


def tiny_overrides(root: Path) -> list[str]:
    """A tiny synthetic COCO set (64 px) written by the data module's own generator, a tiny net."""
    return [
        "task=detection",
        f"data.root={root}",
        "data.image_size=64",
        "data.batch_size=4",
        f"data.generator.classes=[{','.join(CLASSES)}]",
        "data.generator.train_images=8",
        "data.generator.val_images=4",
        "data.generator.test_images=4",
        "data.generator.image_size=64",
        "backbone.width=0.25",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "task.log_images=2",
    ]


def test_default_composition_and_ssdlite_on_v2():
    cfg = compose_cfg(["task=detection"])
    assert list(cfg.backbone.out_indices) == [3, 4]
    assert cfg.head._target_.endswith("SSDHead") and cfg.head.depthwise is False
    assert cfg.data._target_.endswith("CocoDataModule") and cfg.data.root.endswith("synthetic_detection")
    assert cfg.head.anchors._target_.endswith("DefaultBoxes")
    lite = compose_cfg(["task=detection", "backbone=mobilenet_v2", "head=ssdlite"])
    assert lite.backbone._target_.endswith("MobileNetV2") and list(lite.backbone.out_indices) == [3, 4]
    assert lite.backbone.expansion_taps is True and lite.head.depthwise is True
    voc = compose_cfg(["task=detection", "data=voc", "data.root=/somewhere"])
    assert voc.data._target_.endswith("VocDataModule") and voc.data.train_transforms.bbox_params.format == "pascal_voc"
    # a trainer group chosen on the command line still wins over the task's defaults
    debug = compose_cfg(["task=detection", "trainer=debug"])
    assert debug.trainer.max_epochs == 1 and debug.trainer.limit_train_batches == 2


def test_train_test_predict_end_to_end(tmp_path):
    data = tmp_path / "shapes"
    metrics = run_mode(tiny_overrides(data), tmp_path / "train")
    for stage in ("val", "test"):
        for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large"):
            assert f"{stage}/{key}" in metrics
    assert metrics["test/map_50"] >= metrics["test/map_75"] and metrics["test/map_50"] >= metrics["test/map"]
    saved = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert saved["test/map"] == metrics["test/map"]
    ckpt = tmp_path / "train" / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and (tmp_path / "train" / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "train" / "tensorboard").rglob("events.*"))

    tested = run_mode(["mode=test", f"ckpt_path={ckpt}"], tmp_path / "test")
    assert "test/map_50" in json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert tested["test/map"] == pytest.approx(metrics["test/map"], abs=1e-6)

    images = data / "test"
    Image.open(images / "00000.png").convert("L").save(images / "gray.jpg")  # another mode and format
    out = run_mode(
        ["mode=predict", f"ckpt_path={ckpt}", f"predict.input={images}", "predict.score_threshold=0.0"],
        tmp_path / "predict",
    )
    detections = json.loads((tmp_path / "predict" / "predictions.json").read_text())
    assert out["images"] == 5 and isinstance(detections, list)
    names = {n: i for i, n in enumerate(CLASSES)}
    for d in detections:
        assert set(d) == {"image_id", "file_name", "category_id", "category_name", "bbox", "score"}
        # written with the annotation file's ids (1, 3, 5 for the synthetic set), not the contiguous labels
        assert d["category_id"] == 2 * names[d["category_name"]] + 1
        x, y, w, h = d["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= 64.01 and y + h <= 64.01
    drawn = sorted(p.name for p in (tmp_path / "predict" / "drawn").iterdir())
    assert drawn == sorted(p.name for p in images.iterdir())


def test_profile_lands_near_the_papers_counts(tmp_path):
    common = ["task=detection", "mode=profile", "profile.num_classes=80", "profile.warmup=0", "profile.repeats=1"]
    v1 = run_mode(common + ["data.image_size=300"], tmp_path / "v1")
    assert v1["params"] == pytest.approx(6.8e6, rel=0.05)  # MobileNet V1 paper, Table 13
    assert v1["mult_adds"] == pytest.approx(1.2e9, rel=0.1)
    v2 = run_mode(common + ["backbone=mobilenet_v2", "head=ssdlite", "data.image_size=320"], tmp_path / "v2")
    assert v2["params"] == pytest.approx(4.3e6, rel=0.1)  # MobileNet V2 paper, Table 6
    assert v2["mult_adds"] == pytest.approx(0.8e9, rel=0.1)


def test_config_errors_name_the_key(tmp_path):
    # a bad value deep in the task is reported by Hydra with the message (the CLI prints it)
    with pytest.raises(InstantiationException, match="head.anchors.aspect_ratios has 2 entries"):
        run_mode(
            tiny_overrides(tmp_path / "d") + ["head.anchors.aspect_ratios=[[2],[3]]", "mode=profile"], tmp_path / "run"
        )
    with pytest.raises(ConfigError, match="data.image_size=20"):
        run_mode(["task=detection", "data.image_size=20", "mode=profile"], tmp_path / "run2")


def coco2017_layout(root: Path) -> Path:
    """A tiny set in COCO 2017's own layout (annotations/instances_*2017.json, train2017/, val2017/)."""
    src = make_shapes_detection(
        root / "src", classes=CLASSES, train_images=4, val_images=2, test_images=0, image_size=96, seed=3
    )
    out = root / "coco"
    (out / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copytree(src / split, out / f"{split}2017")
        shutil.copy(
            src / "annotations" / f"instances_{split}.json", out / "annotations" / f"instances_{split}2017.json"
        )
    return out


@pytest.mark.parametrize("experiment", ["ssd300_coco_mobilenet_v1", "ssdlite320_coco_mobilenet_v2"])
def test_coco_recipes_compose_and_run_two_steps(tmp_path, experiment):
    root = coco2017_layout(tmp_path)
    cfg = compose_cfg([f"experiment={experiment}"])
    assert cfg.data._target_.endswith("CocoDataModule") and cfg.data.image_size in (300, 320)
    assert cfg.optimizer._target_ == "torch.optim.RMSprop" and cfg.optimizer.lr == 0.004
    # the recipe as written, shrunk only in input size, batch and steps
    metrics = run_mode(
        [
            f"experiment={experiment}",
            f"data.root={root}",
            "data.image_size=128",
            "data.batch_size=2",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "task.log_images=0",
        ],
        tmp_path / "run",
    )
    assert "test/map" in metrics and "val/map" in metrics
    assert metrics["train/loss"] > 0
