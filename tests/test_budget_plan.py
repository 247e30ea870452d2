"""train.time plans what Lightning validates and checkpoints, charges validation as often as it runs,
keeps it to its share of the budget, and gives every step the LR of the final plan's curve."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from mbtasks.callbacks import RunProgressBar, TimeBudget
from mbtasks.callbacks.epoch_log import read_epoch_log
from mbtasks.callbacks.time_budget import plan_steps, validations_left
from mbtasks.tasks.schedules import cosine_with_warmup
from tests.conftest import run_mode

SLOW = ["+callbacks.slow._target_=tests.slow_steps.SlowSteps", "+callbacks.slow.seconds=0.25"]


class SlowValidation(L.Callback):
    """Makes every validation pass ``seconds`` longer (inside the pass, as metrics and plots would)."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = float(seconds)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            time.sleep(self.seconds)


class LrRecorder(L.Callback):
    """Writes ``[[global_step, lr of the first group], ...]``, the LR each optimizer step used, to ``out``."""

    def __init__(self, out: str) -> None:
        self.out, self.used = Path(out), []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.used.append([trainer.global_step, optimizer.param_groups[0]["lr"]])

    def on_train_end(self, trainer, pl_module) -> None:
        self.out.write_text(json.dumps(self.used))


def tiny(root, batch_size: int = 8) -> list[str]:
    return [
        f"data.root={root}",
        "data.generator=null",
        "data.image_size=32",
        f"data.batch_size={batch_size}",
        "backbone.width=0.25",
        "task.log_images=0",
        "trainer.max_epochs=1",
    ]


def recorder(path: Path) -> list[str]:
    return ["+callbacks.lr._target_=tests.test_budget_plan.LrRecorder", f"+callbacks.lr.out={path}"]


def budget_state(ckpt: dict) -> dict:
    return next(v for k, v in ckpt["callbacks"].items() if k.startswith("TimeBudget"))


def assert_lr_follows_the_final_plan(run_dir: Path, used: list, per_epoch: int) -> None:
    """Every step's LR is the final plan's curve at that step; after its peak it never rises."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    plan = budget_state(ckpt)
    base = ckpt["optimizer_states"][0]["param_groups"][0]["initial_lr"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    extra = {"plans": plan["plans"]} if "plans" in plan else {}
    curve = cosine_with_warmup(
        optimizer, total_steps=plan["total_steps"], steps_per_epoch=per_epoch, **extra
    ).lr_lambdas[0]
    assert [s for s, _ in used] == list(range(plan["total_steps"]))
    for step, lr in used:
        assert lr == pytest.approx(base * curve(step), rel=1e-6, abs=1e-12), (step, plan)
    lrs = [lr for _, lr in used]
    peak = lrs.index(max(lrs))
    assert all(b <= a * (1 + 1e-9) for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False)), lrs
    assert ckpt["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.01 * base, rel=1e-3)


# -- the plan, without training ----------------------------------------------------------------


def test_validation_is_charged_as_often_as_it_runs():
    # validation every 5 epochs (and the final): 100 s at 1 s a step, 3 steps an epoch, 10 s a validation
    total, every = plan_steps(100, 0, 3, 1.0, 10.0, -1, 5, None, 100)
    epochs = -(-total // 3)
    assert every == 5
    charged = total * 1.0 + validations_left(epochs - 1, -1, 5) * 10.0
    assert 95 <= charged <= 100  # not 10 s for each of the ~7 epochs


def test_validation_takes_its_share_of_the_budget():
    # 600 s, 2 s a step, 8 steps an epoch, 15 s a validation (the COCO run): 10% holds 4 validations
    total, every = plan_steps(600, 0, 8, 2.0, 15.0, -1, 1, 4, 600)
    epochs = -(-total // 8)
    vals = validations_left(epochs - 1, -1, every)
    assert vals <= 4 and vals * 15.0 <= 0.1 * 600
    assert total * 2.0 + vals * 15.0 <= 600 and total * 2.0 >= 0.85 * 600


def test_the_plan_stops_inside_the_first_epoch_when_that_is_all_the_budget_holds():
    total, _ = plan_steps(5, 5, 100, 0.5, 1.0, -1, 1, 1, 10)
    assert total == 5 + 8  # 4 s of steps, 1 s for the final validation


def test_a_short_plan_keeps_the_warm_up_slope_of_the_first_steps():
    # the first steps run before the plan: their LR must not depend on the plan's length
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    long, short = (cosine_with_warmup(opt, total_steps=t, steps_per_epoch=24).lr_lambdas[0] for t in (240, 10))
    assert [short(s) for s in range(9)] == [long(s) for s in range(9)]
    assert short(10) == pytest.approx(0.01)


def test_progress_bar_shows_the_budget_not_a_changing_epoch_total():
    budget = TimeBudget(time="5m")
    bar = RunProgressBar()

    class Trainer:
        callbacks = [budget, bar]
        max_epochs = 11

    bar._trainer = Trainer()
    text = bar._get_train_description(3)
    assert "Epoch 3" in text and "of 5m00s" in text and "/10" not in text


# -- runs ---------------------------------------------------------------------------------------


def test_final_epoch_is_validated_and_checkpointed_without_a_budget(tiny_shapes, tmp_path):
    # 3 epochs, validation every 2: Lightning alone validates and checkpoints epoch 1 only
    run_mode(tiny(tiny_shapes) + ["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2"], tmp_path)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 9 and last["epoch"] == 2
    records = read_epoch_log(tmp_path / "epochs.jsonl")
    assert [any(k.startswith("val/") for k in r) for r in records] == [False, True, True]


def test_budget_with_sparse_validation_ends_on_the_last_step(tiny_shapes, tmp_path):
    # the repro: train.time with check_val_every_n_epoch=N; validation made slow (1 s a pass)
    lrs = tmp_path / "lr.json"
    slow_val = ["+callbacks.slowval._target_=tests.test_budget_plan.SlowValidation", "+callbacks.slowval.seconds=1.0"]
    run_mode(
        tiny(tiny_shapes) + SLOW + slow_val + recorder(lrs) + ["train.time=12s", "trainer.check_val_every_n_epoch=5"],
        tmp_path / "run",
    )
    run = tmp_path / "run"
    records = read_epoch_log(run / "epochs.jsonl")
    validated = [r for r in records if any(k.startswith("val/") for k in r)]
    assert validated and validated[-1]["epoch"] == records[-1]["epoch"]  # the final epoch is validated
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    plan = budget_state(last)
    # the last step's weights, not an earlier epoch's
    assert last["global_step"] == plan["total_steps"] >= 12, (plan, records, last["epoch"])
    assert last["epoch"] == records[-1]["epoch"]
    # best.ckpt is one of the validated steps, the last one whenever it scored best
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["global_step"] in {min(r["step"], plan["total_steps"]) for r in validated}
    # (best.ckpt follows the task's monitor, val/acc_top1, and moves only on a strict improvement)
    if validated[-1]["val/acc_top1"] > max((r["val/acc_top1"] for r in validated[:-1]), default=-1.0):
        assert best["global_step"] == plan["total_steps"]
    # validation (1 s+) is charged as it runs: at most ~10% of 12 s, i.e. the final one and one while
    # the validation time was still an estimate, and the budget is used, not left to validations never run
    assert len(validated) <= 2
    assert plan["spent"] >= 0.7 * 12
    assert_lr_follows_the_final_plan(run, json.loads(lrs.read_text()), per_epoch=3)
    assert plan["split"]["validations"] == len(validated)


def test_short_budget_plans_early_and_every_step_gets_the_final_plans_lr(tmp_path_factory, tmp_path, caplog):
    # 24 steps an epoch, a budget of ~16 of them: the plan must come after a few steps, not at the epoch's end
    from mbtasks.data.synthetic.shapes import make_shapes_classification

    root = make_shapes_classification(
        tmp_path_factory.mktemp("shapes"),
        classes=["circle", "square", "triangle"],
        train_per_class=16,
        val_per_class=3,
        test_per_class=3,
        image_size=32,
        seed=1,
    )
    lrs = tmp_path / "lr.json"
    with caplog.at_level(logging.INFO, logger="mbtasks.callbacks.time_budget"):
        run_mode(tiny(root, batch_size=2) + SLOW + recorder(lrs) + ["train.time=5s"], tmp_path / "run")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    plan = budget_state(last)
    assert last["global_step"] == plan["total_steps"] < 24 and last["epoch"] == 0
    assert_lr_follows_the_final_plan(tmp_path / "run", json.loads(lrs.read_text()), per_epoch=24)
    assert plan["plans"][1][0] <= 5  # the first plan after 2 skipped + 3 timed steps
    # where the time went, printed at the end
    assert any("in training steps" in r.message and "in validation" in r.message for r in caplog.records)


def test_one_batch_epochs_do_not_log_a_plan_every_step(tiny_shapes, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mbtasks.callbacks.time_budget"):
        run_mode(tiny(tiny_shapes, batch_size=24) + SLOW + ["train.time=8s"], tmp_path)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    plans = [r for r in caplog.records if r.levelno == logging.INFO and " s per step" in r.message]
    assert last["global_step"] >= 10 and len(plans) <= 4, [r.message for r in plans]


def test_progress_bar_redraws_at_most_every_min_interval(monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    drawn = []
    monkeypatch.setattr(RichProgressBar, "on_train_batch_end", lambda self, *a: drawn.append(a[-1]))
    monkeypatch.setattr(RunProgressBar, "total_train_batches", 10)

    class Trainer:
        should_stop = False

    bar = RunProgressBar(min_interval_s=3600)
    for i in range(10):
        bar.on_train_batch_end(Trainer(), None, None, None, i)
    assert drawn == [0, 9]  # the first batch, then only the epoch's last one
