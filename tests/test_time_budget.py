"""train.time: the run and its cosine are sized to a wall-clock budget; resume keeps the plan."""

from __future__ import annotations

import pytest
import torch

from mbtasks.callbacks import TimeBudget
from mbtasks.callbacks.time_budget import parse_duration
from mbtasks.errors import ConfigError
from tests.conftest import run_mode

SLOW = ["+callbacks.slow._target_=tests.slow_steps.SlowSteps", "+callbacks.slow.seconds=0.25"]


def tiny(root) -> list[str]:
    return [
        f"data.root={root}",
        "data.generator=null",
        "data.image_size=32",
        "data.batch_size=8",
        "backbone.width=0.25",
        "task.log_images=0",
        "trainer.max_epochs=1",
    ]


@pytest.mark.parametrize(
    ("text", "seconds"), [("10m", 600), ("90s", 90), ("1h30m", 5400), ("1.5h", 5400), ("2m30s", 150)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "ten minutes", "5x", "0s", "m", 0, "0"])
def test_parse_duration_refuses_with_the_key(text):
    with pytest.raises(ConfigError, match="train.time"):
        parse_duration(text)


@pytest.mark.parametrize(("value", "shown"), [("ten", "'ten'"), ("0", "0"), ("0s", "'0s'")])
def test_bad_budget_fails_before_the_data_is_read(tmp_path, value, shown):
    # train.time=0 used to turn the budget off silently and train for trainer.max_epochs
    with pytest.raises(ConfigError, match=f"train.time={shown}"):
        run_mode([f"data.root={tmp_path / 'missing'}", "data.generator=null", f"train.time={value}"], tmp_path / "run")


def test_zero_budget_is_refused_by_the_callback_too():
    with pytest.raises(ConfigError, match="train.time=0"):
        TimeBudget(time=0)


@pytest.mark.parametrize("share", [0, 1, 1.5, -0.1])
def test_val_share_outside_0_1_is_refused(share):
    with pytest.raises(ConfigError, match="train.val_share"):
        TimeBudget(time="1m", val_share=share)


def _plan_and_lr(ckpt: dict) -> tuple[dict, float, float]:
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("TimeBudget"))
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    return state, ckpt["lr_schedulers"][0]["_last_lr"][0], group["initial_lr"]


def test_budget_sizes_epochs_and_ends_the_cosine_on_time(tiny_shapes, tmp_path):
    # ~0.3 s a step, 3 steps an epoch: 8 s hold several epochs though trainer.max_epochs=1
    run_mode(tiny(tiny_shapes) + SLOW + ["train.time=8s"], tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    plan, last_lr, base_lr = _plan_and_lr(ckpt)
    # whole epochs, or a partial last one when stopping on a whole one would waste over 2.5% of the budget
    assert ckpt["global_step"] == plan["total_steps"] >= 9
    assert ckpt["epoch"] + 1 == -(-plan["total_steps"] // 3) >= 3
    assert last_lr == pytest.approx(0.01 * base_lr, rel=1e-3)  # the cosine reached its floor at the last step
    assert 8 * 0.6 <= plan["spent"] <= 8 * 1.4


@pytest.mark.slow
def test_resume_keeps_the_plan_and_the_rest_of_the_budget(tiny_shapes, tmp_path):
    # validation (hence a checkpoint) every epoch, so the halted run's last.ckpt is at epoch 1
    halt = [
        "+callbacks.halt._target_=tests.slow_steps.StopAfterEpoch",
        "+callbacks.halt.epoch=1",
        "train.val_share=null",
    ]
    run_mode(tiny(tiny_shapes) + SLOW + halt + ["train.time=10s"], tmp_path)
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    plan, _, _ = _plan_and_lr(first)
    assert first["global_step"] == 6 < plan["total_steps"]
    run_mode([f"resume={tmp_path}"], tmp_path)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    resumed, last_lr, base_lr = _plan_and_lr(last)
    assert last["global_step"] == resumed["total_steps"]
    # re-planned on the rest of the budget (a fresh budget would add ~30 steps); steps no longer round to epochs
    assert abs(resumed["total_steps"] - plan["total_steps"]) <= 6
    assert last_lr == pytest.approx(0.01 * base_lr, rel=1e-3)
    assert plan["spent"] < resumed["spent"] <= 10 * 1.4
    # the plans made before the halt are kept: the steps taken keep their LR on the resumed schedule
    assert resumed["plans"][: len(plan["plans"])] == plan["plans"]
    assert resumed["split"]["steps"] == last["global_step"]
