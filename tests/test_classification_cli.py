"""Classification end to end through the real config: train -> test -> predict -> profile."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mbtasks.checkpoint import read as read_checkpoint
from mbtasks.tasks import load_task
from tests.conftest import is_fraction_of, run_mode


def tiny(root) -> list[str]:
    return [
        f"data.root={root}",
        "data.generator=null",
        "data.image_size=32",
        "data.batch_size=8",
        "backbone.width=0.25",
        "trainer.max_epochs=2",
        "task.log_images=4",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mbtasks.data.synthetic.shapes import make_shapes_classification

    root = make_shapes_classification(
        tmp_path_factory.mktemp("shapes"),
        classes=["circle", "square", "triangle"],
        train_per_class=8,
        val_per_class=3,
        test_per_class=3,
        image_size=32,
        seed=1,
    )
    (root / "train" / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    run_dir = tmp_path_factory.mktemp("run")
    metrics = run_mode(tiny(root), run_dir)
    return root, run_dir, metrics


def test_train_writes_run_dir(trained):
    _, run_dir, metrics = trained
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk.pop("warnings") == metrics["warnings"]  # approx() compares numbers, not lists
    assert on_disk == pytest.approx({k: v for k, v in metrics.items() if k != "warnings"})
    for key in ("test/acc_top1", "test/loss", "val/acc_top1", "val/loss", "train/loss"):
        assert key in on_disk, key
    assert is_fraction_of(on_disk["test/acc_top1"], 9)  # 3 classes x 3 test images
    assert not any(k.startswith("test/acc_top5") for k in on_disk)  # 3 classes: top-5 would always be 1.0
    assert on_disk["data/skipped_files"] == 1  # the broken jpeg, skipped and counted
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents*"))
    assert "ClassificationTask" in (run_dir / "config.yaml").read_text()


def test_tensorboard_has_metrics_lr_and_figures(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _ = trained
    scalars, images = set(), set()
    for f in (run_dir / "tensorboard").glob("events.out.tfevents*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
    assert {"train/loss", "val/acc_top1", "val/loss", "test/acc_top1"} <= scalars
    assert any(tag.startswith("lr-") for tag in scalars)
    assert {"val/confusion_matrix", "val/predictions"} <= images


def test_checkpoint_is_self_describing(trained):
    _, run_dir, _ = trained
    ckpt = read_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    meta = ckpt["mbtasks"]
    assert meta["task"] == "classification"
    assert meta["info"]["class_names"] == ["circle", "square", "triangle"]
    assert meta["info"]["image_size"] == 32
    assert meta["config"]["backbone"]["width"] == 0.25
    task, cfg = load_task(run_dir / "checkpoints" / "best.ckpt")
    assert task(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_test_mode_reevaluates_checkpoint(trained, tmp_path):
    root, run_dir, metrics = trained
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    out = run_mode(["mode=test", f"ckpt_path={ckpt}", "data.num_workers=0"], tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc_top1"] == pytest.approx(out["test/acc_top1"])
    # the same checkpoint and data give the same number as the end of training
    assert out["test/acc_top1"] == pytest.approx(metrics["test/acc_top1"])


def test_test_mode_refuses_other_classes(trained, tmp_path):
    from mbtasks.errors import DataError

    root, run_dir, _ = trained
    other = tmp_path / "other"
    shutil.copytree(root, other)
    (other / "test" / "circle").rename(other / "test" / "ellipse")
    with pytest.raises(DataError, match="ellipse"):
        run_mode(
            ["mode=test", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"data.root={other}"], tmp_path / "r"
        )


def test_predict_writes_topk_json(trained, tmp_path):
    root, run_dir, _ = trained
    (root / "test" / "notes.txt").write_text("not an image")
    out = run_mode(
        [
            "mode=predict",
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            f"predict.input={root / 'test'}",
            "predict.top_k=2",
        ],
        tmp_path,
    )
    payload = json.loads((tmp_path / "predictions.json").read_text())
    assert payload == out
    assert len(payload["predictions"]) == 9
    first = payload["predictions"][0]
    assert first["label"] in ("circle", "square", "triangle") and len(first["top_k"]) == 2
    assert first["top_k"][0]["score"] >= first["top_k"][1]["score"]
    single = run_mode(
        [
            "mode=predict",
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            f"predict.input={root / 'test' / 'square' / '00000.png'}",
        ],
        tmp_path / "one",
    )
    assert len(single["predictions"]) == 1 and len(single["predictions"][0]["top_k"]) == 3


def test_predict_rejects_missing_input(trained, tmp_path):
    from mbtasks.errors import ConfigError

    _, run_dir, _ = trained
    with pytest.raises(ConfigError, match="no such file"):
        run_mode(
            ["mode=predict", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"predict.input={tmp_path}/nope"],
            tmp_path,
        )


def test_profile_writes_integers(tmp_path):
    out = run_mode(["mode=profile", "backbone.width=0.25", "data.image_size=128", "profile.repeats=2"], tmp_path)
    on_disk = json.loads((tmp_path / "profile.json").read_text())
    assert on_disk == out
    assert isinstance(out["params"], int) and isinstance(out["mult_adds"], int)
    assert out["mult_adds"] / 1e6 == pytest.approx(41.03 * (128 / 224) ** 2, rel=0.02)
    assert out["latency_ms"] > 0


def test_imagenet_recipes_run_two_steps(tmp_path):
    import numpy as np

    from mbtasks.data.synthetic.shapes import shapes_image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for synset, shape in (("n01440764", "circle"), ("n01443537", "square")):
            folder = tmp_path / "imagenet" / split / synset
            folder.mkdir(parents=True)
            for i in range(2):
                shapes_image(rng, shape, 40).save(folder / f"{synset}_{i}.JPEG")
    for recipe in ("imagenet_mobilenet_v1", "imagenet_mobilenet_v2"):
        run_dir = tmp_path / recipe
        out = run_mode(
            [
                f"experiment={recipe}",
                f"data.root={tmp_path / 'imagenet'}",
                "data.image_size=32",
                "data.batch_size=2",
                "data.num_workers=0",
                "trainer.max_epochs=1",
                "trainer.precision=32-true",
                "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1",
                "trainer.devices=1",
                "backbone.width=0.25",
            ],
            run_dir,
        )
        assert "test/acc_top1" in out
        cfg = (run_dir / "config.yaml").read_text()
        assert "RMSprop" in cfg and "step_decay" in cfg


@pytest.mark.parametrize(
    ("classes", "top_k", "key"), [(3, 5, None), (3, 3, None), (3, 2, "acc_top2"), (8, 5, "acc_top5")]
)
def test_top_k_key_names_the_k_used_and_is_left_out_when_trivial(classes, top_k, key):
    from functools import partial

    from mbtasks.backbones.mobilenet_v1 import MobileNetV1
    from mbtasks.models.classifier import ClassifierHead
    from mbtasks.tasks.classification import ClassificationTask

    info = {"class_names": [f"c{i}" for i in range(classes)], "image_size": 32, "mean": [0] * 3, "std": [1] * 3}
    task = ClassificationTask(MobileNetV1(width=0.25), partial(ClassifierHead), info, top_k=top_k)
    names = set(task.test_metrics.keys())
    assert names == {"test/acc_top1"} | ({f"test/{key}"} if key else set())
