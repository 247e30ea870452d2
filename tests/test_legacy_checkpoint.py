"""Checkpoints and run dirs written before the wiring redesign (format 1) still load, predict and resume.

``tests/legacy/*-format1.ckpt`` were written by mbtasks at 2fb4e6a (width 0.25, 64 px): their
stored config names ``mbtasks.heads.*`` targets, ``finetune.freeze/lr_mult``, ``task.no_decay``,
``head.anchors`` and the ``finite_loss`` / ``backbone_freeze`` callbacks. ``*-io.pt`` holds the
network's output on a fixed input, recorded then.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import mbtasks
from mbtasks.config import validate
from mbtasks.resume import resume_config
from mbtasks.tasks import load_task

LEGACY = Path(__file__).parent / "legacy"
TASKS = ("classification", "detection", "embedding")


def network_output(task, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = task.model(x)
    return torch.cat([y.cls_logits.flatten(), y.bbox_regression.flatten()]) if task.name == "detection" else y


@pytest.mark.parametrize("name", TASKS)
def test_format1_checkpoint_loads_with_the_same_outputs(name):
    task, cfg = load_task(LEGACY / f"{name}-format1.ckpt")
    io = torch.load(LEGACY / f"{name}-format1-io.pt", weights_only=True)
    assert task.name == name
    torch.testing.assert_close(network_output(task, io["input"]), io["output"], rtol=1e-5, atol=1e-5)
    # the stored config is upgraded to today's keys: it composes with the current config tree
    assert "freeze" not in cfg.backbone and "no_decay" not in (cfg.get("optimizer") or {})
    assert not str(cfg.head._target_).startswith("mbtasks.heads.")


@pytest.mark.parametrize("name", TASKS)
def test_format1_checkpoint_predicts_through_the_api(name):
    model = mbtasks.load(LEGACY / f"{name}-format1.ckpt", device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    result = model.predict(image)
    assert len(result) == 1
    if name == "classification":
        assert result[0].label in ("a", "b", "c")
    elif name == "detection":
        assert result[0].boxes.shape[1:] == (4,) and set(result[0].names) <= {"a", "b"}
    else:
        assert result[0].vector.shape == (16,)
        assert abs(float(np.linalg.norm(result[0].vector)) - 1.0) < 1e-4


def test_format1_run_dir_resumes_with_an_upgraded_config(tmp_path):
    run_dir = tmp_path / "old_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(LEGACY / "classification-format1.yaml", run_dir / "config.yaml")
    shutil.copy(LEGACY / "classification-format1.ckpt", run_dir / "checkpoints" / "last.ckpt")
    fresh = OmegaConf.load(LEGACY / "classification-format1.yaml")
    fresh.resume = str(run_dir)
    fresh.trainer.max_epochs = 3  # the new command line: trainer.max_epochs=3
    cfg, where = resume_config(fresh, tmp_path / "new", ["trainer.max_epochs=3"])
    assert where == run_dir and cfg.trainer.max_epochs == 3
    validate(cfg)
    assert "finite_loss" not in cfg.callbacks and "backbone_freeze" not in cfg.callbacks
    assert "no_decay" not in cfg.optimizer and list(cfg.task.no_decay) == ["norm", "bias", "depthwise"]
