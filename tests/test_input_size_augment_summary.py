"""Any input size for every task, augmentation presets from the command line, a model summary with real FLOPs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.model_summary import ModelSummary

from mbtasks.config import validate
from mbtasks.errors import ConfigError
from mbtasks.tasks import build_task
from tests.conftest import compose_cfg, is_fraction_of, run_mode

INFO = {"class_names": ["a", "b"], "image_size": 112, "mean": [0.5] * 3, "std": [0.5] * 3, "num_train_identities": 4}


@pytest.mark.parametrize("task", ["classification", "embedding", "detection"])
def test_any_input_size_from_32_up(task):
    cfg = compose_cfg([f"task={task}", "backbone.width=0.25", "data.image_size=112"])
    validate(cfg)
    model = build_task(cfg, INFO).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 112, 112))
    if task == "classification":
        assert out.shape == (2, 2)
    elif task == "embedding":
        assert out.shape == (2, 128)


def test_a_head_that_needs_a_multiple_says_which(monkeypatch):
    import dataclasses

    from mbtasks.tasks.classification import ClassificationTask

    monkeypatch.setattr(ClassificationTask, "spec", dataclasses.replace(ClassificationTask.spec, input_multiple=16))
    with pytest.raises(
        ConfigError, match=r"data.image_size=100: task=classification needs a multiple of 16, e.g. 96 or 112"
    ):
        validate(compose_cfg(["data.image_size=100"]))


def test_classification_trains_at_a_size_that_is_not_a_multiple_of_32(tiny_shapes, tmp_path):
    metrics = run_mode(
        [
            f"data.root={tiny_shapes}",
            "data.generator=null",
            "data.image_size=40",
            "data.batch_size=8",
            "backbone.width=0.25",
            "trainer.max_epochs=1",
            "task.log_images=0",
            "augment=light",
        ],
        tmp_path,
    )
    assert is_fraction_of(metrics["test/acc_top1"], 9)  # 3 classes x 3 test images, at 40 px
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc_top1"] == metrics["test/acc_top1"]


def test_model_summary_counts_flops():
    cfg = compose_cfg(["backbone.width=0.25", "data.image_size=64"])
    summary = ModelSummary(build_task(cfg, {**INFO, "image_size": 64}), max_depth=1)
    assert summary.total_flops > 1_000_000  # was 0 without an example input: "Total FLOPs: 0"


@pytest.mark.parametrize("preset", ["none", "light", "default", "ssd"])
def test_augment_presets_build_and_run(preset):
    task = "detection" if preset == "ssd" else "classification"
    for t in {task, "detection"} if preset != "ssd" else {task}:
        cfg = compose_cfg([f"task={t}", f"augment={preset}", "data.image_size=64"])
        validate(cfg)
        pipeline = instantiate(cfg.data.train_transforms)
        image = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
        if t == "detection":
            out = pipeline(image=image, bboxes=np.array([[10, 10, 60, 50]], np.float32), labels=[0])
        else:
            out = pipeline(image=image)
        assert out["image"].shape == (64, 64, 3)
    names = [
        type(x).__name__
        for x in instantiate(
            compose_cfg([f"augment={preset}"] + (["task=detection"] if preset == "ssd" else [])).data.train_transforms
        ).transforms
    ]
    expected = {
        "none": ["Resize"],
        "light": ["Resize", "HorizontalFlip"],
        "default": ["Resize", "HorizontalFlip", "Affine", "ColorJitter"],
        "ssd": ["Resize", "ColorJitter", "RandomScale", "PadIfNeeded", "RandomIoUCrop", "Resize", "HorizontalFlip"],
    }[preset]
    assert names == expected


def test_box_augmentation_refused_for_tasks_without_boxes():
    with pytest.raises(ConfigError, match="augment=ssd.*task=embedding cannot use"):
        validate(compose_cfg(["task=embedding", "augment=ssd"]))


def test_augment_is_accepted_on_the_command_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "mbtasks",
        "mode=profile",
        "task=embedding",
        "augment=none",
        "backbone.width=0.25",
        "data.image_size=112",
        "profile.repeats=1",
        "profile.warmup=0",
        f"hydra.run.dir={tmp_path}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "profile.json").is_file()
    import yaml

    composed = yaml.safe_load((tmp_path / ".hydra" / "config.yaml").read_text())
    assert [t["_target_"] for t in composed["data"]["train_transforms"]["transforms"]] == ["albumentations.Resize"]


@pytest.mark.parametrize("data", ["voc", "coco"])
def test_real_detection_data_default_to_the_mild_pipeline_and_papers_keep_ssd(data, tmp_path):
    # chosen on the real sets' validation mAP (README "Real data"): mild augmentation, boxes following
    cfg = compose_cfg(["task=detection", f"data={data}", f"data.root={tmp_path}"])
    pipeline = instantiate(cfg.data.train_transforms)
    assert [type(t).__name__ for t in pipeline.transforms] == ["Resize", "HorizontalFlip", "Affine", "ColorJitter"]
    assert "bboxes" in pipeline.processors and cfg.data.batch_size == 8
    out = pipeline(image=np.zeros((80, 100, 3), np.uint8), bboxes=np.array([[10, 10, 60, 50]], np.float32), labels=[0])
    assert out["image"].shape == (cfg.data.image_size,) * 2 + (3,) and len(out["bboxes"]) == 1
    for experiment in ("ssd300_coco_mobilenet_v1", "ssdlite320_coco_mobilenet_v2"):
        names = [
            type(t).__name__
            for t in instantiate(compose_cfg([f"experiment={experiment}"]).data.train_transforms).transforms
        ]
        assert "RandomIoUCrop" in names and "RandomScale" in names
