"""Nothing lost: a new run never writes over another run's outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from mbtasks.__main__ import refuse_used_run_dir

REPO = Path(__file__).resolve().parent.parent


def test_cli_refuses_to_train_into_a_used_run_dir(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"the old run's weights")
    (tmp_path / "metrics.json").write_text('{"test/acc_top1": 0.9}')
    (tmp_path / "config.yaml").write_text("old: config\n")
    proc = subprocess.run([sys.executable, "-m", "mbtasks", f"hydra.run.dir={tmp_path}", "trainer.max_epochs=1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {tmp_path} already holds a training run's outputs; continue it with resume=" in proc.stderr
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == b"the old run's weights"
    assert (tmp_path / "metrics.json").read_text() == '{"test/acc_top1": 0.9}'
    assert (tmp_path / "config.yaml").read_text() == "old: config\n"


def test_resume_and_other_modes_may_use_the_dir(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    refuse_used_run_dir(OmegaConf.create({"mode": "train", "resume": str(tmp_path)}), tmp_path)
    refuse_used_run_dir(OmegaConf.create({"mode": "check", "resume": None}), tmp_path)
    refuse_used_run_dir(OmegaConf.create({"mode": "train", "resume": None}), tmp_path / "fresh")
