"""train.time: the run and its cosine are sized to a wall-clock budget; resume keeps the plan."""

from __future__ import annotations

import pytest
import torch

from mbtasks.callbacks.time_budget import parse_duration
from mbtasks.errors import ConfigError
from tests.conftest import run_mode

SLOW = ["+callbacks.slow._target_=tests.slow_steps.SlowSteps", "+callbacks.slow.seconds=0.25"]


def tiny(root) -> list[str]:
    return [f"data.root={root}", "data.generator=null", "data.image_size=32", "data.batch_size=8",
            "backbone.width=0.25", "task.log_images=0", "trainer.max_epochs=1"]


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600), ("90s", 90), ("1h30m", 5400), ("1.5h", 5400), ("2m30s", 150)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "ten minutes", "5x", "0s", "m"])
def test_parse_duration_refuses_with_the_key(text):
    with pytest.raises(ConfigError, match="train.time"):
        parse_duration(text)


def test_bad_budget_fails_before_the_data_is_read(tmp_path):
    with pytest.raises(ConfigError, match="train.time='ten'"):
        run_mode([f"data.root={tmp_path / 'missing'}", "data.generator=null", "train.time=ten"], tmp_path / "run")


def _plan_and_lr(ckpt: dict) -> tuple[dict, float, float]:
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("TimeBudget"))
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    return state, ckpt["lr_schedulers"][0]["_last_lr"][0], group["initial_lr"]


def test_budget_sizes_epochs_and_ends_the_cosine_on_time(tiny_shapes, tmp_path):
    # ~0.3 s a step, 3 steps an epoch: 8 s hold several epochs though trainer.max_epochs=1
    run_mode(tiny(tiny_shapes) + SLOW + ["train.time=8s"], tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    plan, last_lr, base_lr = _plan_and_lr(ckpt)
    assert ckpt["global_step"] == plan["total_steps"] and plan["total_steps"] % 3 == 0
    assert ckpt["epoch"] + 1 == plan["total_steps"] // 3 >= 3
    assert last_lr == pytest.approx(0.01 * base_lr, rel=1e-3)  # the cosine reached its floor at the last step
    assert 8 * 0.6 <= plan["spent"] <= 8 * 1.4


@pytest.mark.slow
def test_resume_keeps_the_plan_and_the_rest_of_the_budget(tiny_shapes, tmp_path):
    halt = ["+callbacks.halt._target_=tests.slow_steps.StopAfterEpoch", "+callbacks.halt.epoch=1"]
    run_mode(tiny(tiny_shapes) + SLOW + halt + ["train.time=10s"], tmp_path)
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    plan, _, _ = _plan_and_lr(first)
    assert first["global_step"] == 6 < plan["total_steps"]
    run_mode([f"resume={tmp_path}"], tmp_path)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    resumed, last_lr, base_lr = _plan_and_lr(last)
    assert last["global_step"] == resumed["total_steps"]
    assert abs(resumed["total_steps"] - plan["total_steps"]) <= 3  # re-planned on the rest of the budget
    assert last_lr == pytest.approx(0.01 * base_lr, rel=1e-3)
    assert plan["spent"] < resumed["spent"] <= 10 * 1.4
