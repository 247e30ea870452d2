"""trainer=ddp on CPU (2 gloo processes): one run dir, rank-0 files, test metrics equal to a single-process test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_cfg, run_mode

REPO = Path(__file__).resolve().parent.parent


def test_ddp_config():
    cfg = compose_cfg(["trainer=ddp"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2


@pytest.mark.slow
def test_classification_ddp_matches_single_process_test(tmp_path):
    from mbtasks.data.synthetic import make_shapes_classification

    # 12 test images: two ranks get 6 each, no padding duplicates by the distributed sampler
    root = make_shapes_classification(tmp_path / "shapes", classes=["circle", "square", "triangle"], train_per_class=8,
                                      val_per_class=4, test_per_class=4, image_size=32, seed=1)
    run_dir = tmp_path / "run"
    args = ["trainer=ddp", "trainer.accelerator=cpu", f"data.root={root}", "data.generator=null", "data.image_size=32",
            "data.batch_size=4", "backbone.width=0.25", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
            "data.num_workers=0", "task.log_images=0", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-m", "mbtasks", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=500, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((run_dir / "metrics.json").read_text())
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]  # rank 0 alone writes it
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    single = run_mode(["mode=test", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"], tmp_path / "single")
    for key in ("test/acc_top1", "test/acc_top5", "test/loss"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key


def _coco_update(metric, image_ids):
    import torch

    for i in image_ids:
        gt = torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 50.0, 60.0]])
        pred = gt + torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 12.0, 0.0, 2.0]]) * (i % 3)
        metric.update([{"boxes": pred, "scores": torch.tensor([0.9, 0.6]), "labels": torch.tensor([0, 1])}],
                      [{"image_id": i, "orig_size": (64, 64), "gt_boxes": gt, "gt_labels": torch.tensor([0, 1]),
                        "gt_iscrowd": torch.tensor([False, False]), "gt_area": torch.tensor([0.0, 0.0])}])


def test_coco_map_over_gathered_ranks_equals_one_process():
    """After a DDP sync torchmetrics holds each list state as one cat'ed tensor; mAP must be the same."""
    import torch

    from mbtasks.metrics.coco import CocoMeanAP

    whole = CocoMeanAP()
    _coco_update(whole, range(1, 7))
    expected = whole.compute()
    assert 0 < expected["map"] < 1
    ranks = [CocoMeanAP(), CocoMeanAP()]
    _coco_update(ranks[0], [1, 3, 5])
    _coco_update(ranks[1], [2, 4, 6])
    gathered = CocoMeanAP()
    for name in ("images", "dets", "gts"):  # what dist_reduce_fx="cat" leaves after the all-gather
        setattr(gathered, name, torch.cat([torch.cat(getattr(r, name)) for r in ranks]))
    gathered._update_count = 1
    assert gathered.compute() == pytest.approx(expected)


@pytest.mark.slow
def test_detection_ddp_matches_single_process_test(tmp_path):
    from mbtasks.data.synthetic import make_shapes_detection

    root = make_shapes_detection(tmp_path / "det", classes=["circle", "square"], train_images=8, val_images=4,
                                 test_images=4, image_size=64, seed=3)
    run_dir = tmp_path / "run"
    args = ["task=detection", "trainer=ddp", "trainer.accelerator=cpu", f"data.root={root}", "data.generator=null",
            "data.image_size=64", "data.batch_size=2", "backbone.width=0.25", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "data.num_workers=0", "task.log_images=0", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-m", "mbtasks", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=500, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((run_dir / "metrics.json").read_text())
    single = run_mode(["mode=test", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"], tmp_path / "single")
    for key in ("test/map", "test/map_50", "test/mar_100"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key
