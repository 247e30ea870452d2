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
