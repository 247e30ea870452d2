"""Checkpoints survive a crash mid-save; a non-finite loss stops the run naming step and terms."""

from __future__ import annotations

import pytest
import torch

from mbtasks.atomic_files import remove_stale_temporaries, save_torch_atomic, write_json_atomic
from mbtasks.checkpoint import AtomicCheckpointIO
from mbtasks.errors import NonFiniteLossError
from tests.conftest import compose_cfg, run_mode


def test_save_atomic_failure_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_torch_atomic({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed during the save")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_json_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # not serialisable: fails after the temporary file was opened
    assert path.read_text() == '{\n  "a": 1\n}' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    (tmp_path / ".last.ckpt.tmp-1234").write_bytes(b"half")
    (tmp_path / "last.ckpt").write_bytes(b"whole")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".last.ckpt.tmp-1234"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def tiny(root) -> list[str]:
    return [
        f"data.root={root}",
        "data.generator=null",
        "data.image_size=32",
        "data.batch_size=8",
        "backbone.width=0.25",
        "task.log_images=0",
    ]


def test_absurd_learning_rate_stops_naming_step_and_terms(tiny_shapes, tmp_path):
    with pytest.raises(NonFiniteLossError) as info:
        run_mode(tiny(tiny_shapes) + ["trainer.max_epochs=3", "optimizer.lr=1e12", "scheduler=constant"], tmp_path)
    message = str(info.value)
    assert "not finite at global step" in message and "loss=" in message and "(epoch" in message
    assert "optimizer.lr" in message  # says what to change
    # the run stopped there: no metrics.json, and any checkpoint is a readable, finite one
    assert not (tmp_path / "metrics.json").exists()
    last = tmp_path / "checkpoints" / "last.ckpt"
    if last.exists():
        assert "last good checkpoint" in message
        state = torch.load(last, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_injected_nan_is_caught_by_the_task_guard_before_backward():
    """Every task's training_step (BaseTask) checks its loss terms; the step's error names all of them."""
    from mbtasks.tasks import build_task

    task = build_task(
        compose_cfg(["backbone.width=0.25"]),
        {"class_names": ["a", "b"], "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
    )
    terms = {"loss": torch.tensor(float("nan")), "loss_box": torch.tensor(0.5), "loss_cls": torch.tensor(float("inf"))}
    task.loss_terms = lambda batch: terms
    with pytest.raises(NonFiniteLossError, match=r"global step 0 \(epoch 0\): loss=nan, loss_box=0.5, loss_cls=inf"):
        task.training_step((torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)), 0)
    terms = {"loss": torch.tensor(1.0)}
    task.log = lambda *args, **kwargs: None  # no trainer attached: logging is not what is tested
    assert task.training_step((torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)), 0).item() == 1.0


def test_cli_prints_one_error_line_for_a_diverged_run(tiny_shapes, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    args = tiny(tiny_shapes) + [
        "trainer.max_epochs=2",
        "optimizer.lr=1e12",
        "scheduler=constant",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "mbtasks", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: training loss is not finite at global step" in proc.stderr
    assert "Traceback" not in proc.stderr
