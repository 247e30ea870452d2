"""Resume after a crash: same run dir, same steps, optimizer / scheduler / RNG state, no epoch lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mbtasks.callbacks import EpochLog, RngState
from mbtasks.callbacks.epoch_log import read_epoch_log
from mbtasks.errors import ConfigError
from mbtasks.resume import resume_config, run_dir_for
from tests.conftest import compose_cfg, run_mode

REPO = Path(__file__).resolve().parent.parent
BATCHES_PER_EPOCH = 3  # 3 classes x 8 training images, batch 8


def tiny(root) -> list[str]:
    return [
        f"data.root={root}",
        "data.generator=null",
        "data.image_size=32",
        "data.batch_size=8",
        "backbone.width=0.25",
        "task.log_images=0",
        "scheduler=cosine",
    ]


def tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    """Steps of a scalar as TensorBoard shows them (restarts purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_run_dir_for():
    assert run_dir_for("outputs/x/1", "default") == "outputs/x/1"
    for value in (None, True, False, "", "true"):
        assert run_dir_for(value, "default") == "default"


def test_resume_needs_last_checkpoint(tmp_path):
    cfg = compose_cfg([f"resume={tmp_path}"])
    with pytest.raises(ConfigError, match="last.ckpt not found"):
        resume_config(cfg, tmp_path, [f"resume={tmp_path}"])
    cfg = compose_cfg(["ckpt_path=last"])
    with pytest.raises(ConfigError, match="last.ckpt not found"):
        resume_config(cfg, tmp_path, ["ckpt_path=last"])


def test_resume_takes_the_runs_config_and_plain_overrides(tmp_path):
    from omegaconf import OmegaConf

    saved = compose_cfg(["task=detection", "backbone.width=0.5"])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    overrides = [f"resume={tmp_path}", "trainer.max_epochs=7"]
    cfg, run_dir = resume_config(compose_cfg(overrides), Path("elsewhere"), overrides)
    assert run_dir == tmp_path
    assert cfg.task._target_.endswith("DetectionTask") and cfg.backbone.width == 0.5
    assert cfg.trainer.max_epochs == 7 and cfg.ckpt_path == str(tmp_path / "checkpoints" / "last.ckpt")
    overrides = [f"resume={tmp_path}", "backbone=mobilenet_v2"]
    with pytest.raises(ConfigError, match="config group cannot change"):
        resume_config(compose_cfg(overrides), tmp_path, overrides)


def test_rng_state_round_trip():
    import random

    import numpy as np

    callback = RngState()
    state = callback.state_dict()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(3)
    callback.load_state_dict(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    # weights_only=True can read it back: tensors and plain containers only
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rng-{os.getpid()}.pt"
    torch.save({"rng": state}, path)
    try:
        torch.load(path, weights_only=True)
    finally:
        path.unlink()


def test_epoch_log_cuts_back_to_the_checkpoint(tmp_path):
    log = tmp_path / "epochs.jsonl"
    log.write_text("".join(f'{{"epoch": {e}, "step": {3 * e + 3}}}\n' for e in range(3)) + '{"epoch": 3, "st')
    callback = EpochLog(log)
    callback.load_state_dict({"epochs_logged": 2})

    class FakeTrainer:
        is_global_zero = True
        loggers = []
        current_epoch = 2
        global_step = 6

    callback.on_train_start(FakeTrainer(), None)
    assert [r["epoch"] for r in read_epoch_log(log)] == [0, 1]


def test_epoch_log_writes_json_for_non_finite_values(tmp_path):
    """A diverged epoch's NaN loss or LR is written as null: ``NaN`` is not JSON."""
    log = tmp_path / "epochs.jsonl"
    callback = EpochLog(log)

    class FakeTrainer:
        is_global_zero, sanity_checking, loggers = True, False, []
        current_epoch, global_step = 0, 4
        callback_metrics = {"train/loss": torch.tensor(float("nan")), "train/acc": torch.tensor(0.5)}
        optimizers = [torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=float("inf"))]

    callback.on_train_start(FakeTrainer(), None)
    callback.on_train_epoch_end(FakeTrainer(), None)
    assert "NaN" not in log.read_text() and "Infinity" not in log.read_text()
    assert read_epoch_log(log) == [{"epoch": 0, "step": 4, "train/loss": None, "train/acc": 0.5, "lr/0": None}]


def test_resume_in_process(tiny_shapes, tmp_path):
    run_mode(tiny(tiny_shapes) + ["trainer.max_epochs=1"], tmp_path)
    events = set((tmp_path / "tensorboard").glob("events.out.tfevents*"))
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == BATCHES_PER_EPOCH
    run_mode([f"resume={tmp_path}", "trainer.max_epochs=2"], tmp_path)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * BATCHES_PER_EPOCH and last["epoch"] == 1
    assert [r["epoch"] for r in read_epoch_log(tmp_path / "epochs.jsonl")] == [0, 1]
    # TensorBoard appends to the same dir: new event files beside the old ones, no version_1/
    assert events < set((tmp_path / "tensorboard").glob("events.out.tfevents*"))
    assert not [p for p in (tmp_path / "tensorboard").iterdir() if p.is_dir()]
    assert sorted(tensorboard_steps(tmp_path, "val/loss")) == [BATCHES_PER_EPOCH - 1, 2 * BATCHES_PER_EPOCH - 1]


def cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "mbtasks", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_shapes, tmp_path):
    epochs = 4
    common = tiny(tiny_shapes) + [
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "data.num_workers=0",
        "+callbacks.slow._target_=tests.slow_steps.SlowSteps",
        "+callbacks.slow.seconds=0.4",
    ]
    killed, whole = tmp_path / "killed", tmp_path / "whole"

    proc = cli(common + [f"hydra.run.dir={killed}"])
    deadline = time.monotonic() + 240
    while len(read_epoch_log(killed / "epochs.jsonl")) < 2:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.1)
    time.sleep(0.5)  # into the next epoch: some of its steps are logged, none checkpointed
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "checkpoints" / "last.ckpt").is_file()
    assert len(read_epoch_log(killed / "epochs.jsonl")) < epochs

    resumed = cli([f"resume={killed}"])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    reference = cli(common + [f"hydra.run.dir={whole}"])
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out

    ckpt_killed = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt_whole = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt_killed["global_step"] == ckpt_whole["global_step"] == epochs * BATCHES_PER_EPOCH
    assert ckpt_killed["epoch"] == ckpt_whole["epoch"]
    # optimizer and scheduler went on from their saved state, not from scratch
    assert ckpt_killed["lr_schedulers"][0]["last_epoch"] == ckpt_whole["lr_schedulers"][0]["last_epoch"]
    state_killed, state_whole = (c["optimizer_states"][0]["state"] for c in (ckpt_killed, ckpt_whole))
    assert state_killed and state_killed.keys() == state_whole.keys()
    # every epoch exactly once (values differ: albumentations 2 draws augmentations from its own generators)
    log_killed, log_whole = read_epoch_log(killed / "epochs.jsonl"), read_epoch_log(whole / "epochs.jsonl")
    assert [r["epoch"] for r in log_killed] == list(range(epochs))
    assert [r["step"] for r in log_killed] == [r["step"] for r in log_whole]
    assert all(r["val/loss"] is not None for r in log_killed)
    # TensorBoard: one value per epoch and per step, none lost, none doubled
    assert tensorboard_steps(killed, "val/loss") == tensorboard_steps(whole, "val/loss")
    assert len(tensorboard_steps(killed, "val/loss")) == epochs
    steps = tensorboard_steps(killed, "train/loss")
    assert steps == sorted(set(steps)) == tensorboard_steps(whole, "train/loss")


def test_resume_true_uses_the_given_run_dir(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (tmp_path / "config.yaml").write_text("mode: train\n")  # without it the config comes from last.ckpt
    for overrides in (["resume=true"], ["ckpt_path=last"]):
        cfg, run_dir = resume_config(compose_cfg(overrides), tmp_path, overrides)
        assert run_dir == tmp_path and cfg.ckpt_path == str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="use it with mode=train"):
        resume_config(compose_cfg(["resume=true", "mode=check"]), tmp_path, ["resume=true"])
