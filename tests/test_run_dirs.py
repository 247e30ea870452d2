"""Nothing lost: a new run never writes over another run's outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mbtasks.errors import ConfigError
from mbtasks.modes.run import claim_run_dir

REPO = Path(__file__).resolve().parent.parent


def test_cli_refuses_to_train_into_a_used_run_dir(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"the old run's weights")
    (tmp_path / "metrics.json").write_text('{"test/acc_top1": 0.9}')
    (tmp_path / "config.yaml").write_text("old: config\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mbtasks", f"hydra.run.dir={tmp_path}", "trainer.max_epochs=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {tmp_path} already holds a training run's outputs; continue it with resume=" in proc.stderr
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == b"the old run's weights"
    assert (tmp_path / "metrics.json").read_text() == '{"test/acc_top1": 0.9}'
    assert (tmp_path / "config.yaml").read_text() == "old: config\n"


def test_resume_may_use_the_dir_and_a_fresh_dir_is_used_as_it_is(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    assert claim_run_dir(OmegaConf.create({"mode": "train", "resume": str(tmp_path)}), tmp_path) == tmp_path
    assert claim_run_dir(OmegaConf.create({"mode": "train", "resume": None}), tmp_path / "fresh") == tmp_path / "fresh"
    # Hydra's own files do not make a dir used
    (tmp_path / "new" / ".hydra").mkdir(parents=True)
    (tmp_path / "new" / "__main__.log").write_text("")
    assert claim_run_dir(OmegaConf.create({"mode": "train", "resume": None}), tmp_path / "new") == tmp_path / "new"


@pytest.mark.parametrize("mode", ["test", "predict", "export", "check", "profile"])
def test_other_modes_write_into_a_fresh_sub_dir(tmp_path, mode):
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "config.yaml").write_text("old: config\n")
    cfg = OmegaConf.create({"mode": mode, "resume": None})
    first = claim_run_dir(cfg, tmp_path)
    assert first == tmp_path / mode and first.is_dir()
    (first / "metrics.json").write_text("{}")
    assert claim_run_dir(cfg, tmp_path) == tmp_path / f"{mode}-2"


def test_a_run_that_stopped_at_start_up_leaves_a_reusable_dir(tmp_path):
    (tmp_path / "config.yaml").write_text("failed: start\n")
    assert claim_run_dir(OmegaConf.create({"mode": "train", "resume": None}), tmp_path) == tmp_path


def test_train_refuses_a_dir_with_other_files(tmp_path):
    (tmp_path / "check.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds other files \(check\.json\).*new hydra\.run\.dir"):
        claim_run_dir(OmegaConf.create({"mode": "train", "resume": None}), tmp_path)


def test_cli_test_mode_keeps_a_training_runs_records(tmp_path):
    """mode=profile pointed at a training run dir (issue 12): the run's metrics.json and config.yaml
    stay as they were, the new outputs go to <dir>/profile and the CLI says so."""
    (tmp_path / "metrics.json").write_text('{"test/acc_top1": 0.9}')
    (tmp_path / "config.yaml").write_text("old: config\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbtasks",
            "mode=profile",
            f"hydra.run.dir={tmp_path}",
            "backbone.width=0.25",
            "data.image_size=64",
            "profile.repeats=1",
            "profile.warmup=0",
            "profile.num_classes=10",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"writes into {tmp_path / 'profile'}" in proc.stderr
    assert (tmp_path / "metrics.json").read_text() == '{"test/acc_top1": 0.9}'
    assert (tmp_path / "config.yaml").read_text() == "old: config\n"
    assert json.loads((tmp_path / "profile" / "profile.json").read_text())["width"] == 0.25
