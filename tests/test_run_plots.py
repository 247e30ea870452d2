"""The run dir holds PNG plots and results.csv after train / test; epochs.jsonl has no stale val values."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from tests.conftest import run_mode

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_side: int = 200) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert min(img.size) >= min_side, img.size


def test_classification_run_plots_and_epoch_records(tiny_shapes, tmp_path):
    # validation every 2nd epoch (and the final one): epochs 0 and 2 must not repeat epoch 1's val values
    run_mode(
        [
            f"data.root={tiny_shapes}",
            "data.generator=null",
            "data.image_size=32",
            "data.batch_size=8",
            "backbone.width=0.25",
            "trainer.max_epochs=4",
            "trainer.check_val_every_n_epoch=2",
            "task.log_images=0",
        ],
        tmp_path,
    )
    records = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert [any(k.startswith("val/") for k in r) for r in records] == [False, True, False, True]
    assert all("train/loss" in r and r["lr/head"] > 0 for r in records)
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert rows[0]["val/loss"] == "" and float(rows[1]["val/loss"]) > 0
    for name in ("results.png", "confusion_matrix.png"):
        assert_png(tmp_path / name)
    # mode=test writes the test plots into its own run dir
    run_mode(["mode=test", f"ckpt_path={tmp_path / 'checkpoints' / 'best.ckpt'}"], tmp_path / "test")
    assert_png(tmp_path / "test" / "confusion_matrix.png")
    assert not (tmp_path / "test" / "results.png").exists()


def test_detection_and_embedding_plots(tmp_path):
    from tests.test_detection_cli import tiny_overrides as detection
    from tests.test_embedding_cli import tiny_overrides as embedding

    run_mode(detection(tmp_path / "shapes"), tmp_path / "det")
    for name in ("results.png", "pr_curve.png", "val_predictions.png", "test_predictions.png"):
        assert_png(tmp_path / "det" / name)
    run_mode(embedding(tmp_path / "faces"), tmp_path / "emb")
    for name in ("results.png", "roc.png", "distances.png"):
        assert_png(tmp_path / "emb" / name)


def test_plots_can_be_turned_off(tiny_shapes, tmp_path):
    run_mode(
        [
            f"data.root={tiny_shapes}",
            "data.generator=null",
            "data.image_size=32",
            "data.batch_size=8",
            "backbone.width=0.25",
            "trainer.max_epochs=1",
            "task.log_images=0",
            "callbacks.plots=null",
        ],
        tmp_path,
    )
    assert (tmp_path / "metrics.json").is_file() and not list(tmp_path.glob("*.png"))
    # the run-dir files are off, the task's TensorBoard figures are not
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "val/confusion_matrix" in events.Tags()["images"]


@pytest.mark.parametrize("n", [3, 40])
def test_confusion_figure_any_class_count(tmp_path, n):
    import numpy as np

    from mbtasks.callbacks.plots import save_figure
    from mbtasks.tasks.classification.figures import confusion_matrix

    matrix = np.random.default_rng(0).integers(0, 9, (n, n))
    assert_png(save_figure(confusion_matrix(matrix, [f"c{i}" for i in range(n)]), tmp_path / "cm.png"))
