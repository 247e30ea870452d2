"""Hyperparameter search: ``hparams_search=<task>_optuna`` (Hydra's Optuna sweeper), mbtasks/search.py."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from mbtasks import search
from mbtasks.cli import command_line_error
from mbtasks.config import CONFIG_DIR
from mbtasks.errors import ConfigError
from tests.conftest import compose_cfg

REPO = Path(__file__).resolve().parent.parent
needs_plugin = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hydra-optuna-sweeper not installed (pip install -e '.[search]')",
)
METRIC = {"classification": "val/acc_top1", "detection": "val/map_50", "embedding": "val/verification_acc"}


@needs_plugin
@pytest.mark.parametrize("task", sorted(METRIC))
def test_search_configs_compose(task):
    """Each task's search: the Optuna sweeper maximizing a val/ metric, a seeded TPE sampler, the
    trials' train.time budget and no final test, and a search space over LR, weight decay, batch
    size and augmentation."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hparams_search={task}_optuna"], return_hydra_config=True)
    assert cfg.optimized_metric == METRIC[task]
    assert cfg.task._target_.split(".")[2] == task
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_.endswith("TPESampler") and sweeper.sampler.seed is not None
    assert sweeper.custom_search_space == "mbtasks.search.finetune_space"
    params = sweeper.params
    assert params["train.time"] == "2m" and params["train.test_after"] == "false"
    batch = "data.identities_per_batch" if task == "embedding" else "data.batch_size"
    for key in ("optimizer.lr", "optimizer.weight_decay", batch, "augment"):
        assert key in params and ("interval" in params[key] or "choice" in params[key]), key
    assert cfg.hydra.callbacks.best_trial._target_ == "mbtasks.search.BestTrial"


def test_objective_is_the_best_validation_value(tmp_path):
    """The trial's score is the best of its validations (epochs.jsonl), not the last, never test."""
    records = [
        {"epoch": 0, "val/acc_top1": 0.2},
        {"epoch": 1},
        {"epoch": 2, "val/acc_top1": 0.6},
        {"epoch": 3, "val/acc_top1": 0.4},
    ]
    (tmp_path / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = {"val/acc_top1": 0.4, "test/acc_top1": 0.9}
    cfg = OmegaConf.create({"optimized_metric": "val/acc_top1"})
    assert search.objective(cfg, tmp_path, metrics) == pytest.approx(0.6)
    assert search.objective(cfg, tmp_path, metrics, maximize=False) == pytest.approx(0.2)
    assert search.objective(OmegaConf.create({}), tmp_path, metrics) is None  # not a search
    with pytest.raises(ConfigError, match="optimized_metric=test/acc_top1: a search is scored on validation"):
        search.objective(OmegaConf.create({"optimized_metric": "test/acc_top1"}), tmp_path, metrics)
    with pytest.raises(ConfigError, match=r"optimized_metric=val/map_50: the run logged no such .*val/acc_top1"):
        search.objective(OmegaConf.create({"optimized_metric": "val/map_50"}), tmp_path, metrics)


def test_finetune_space_only_for_pretrained_backbones():
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    search.finetune_space(OmegaConf.create({"backbone": {"pretrained": None}}), trial)
    assert trial.params == {}  # from scratch: freezing random weights is refused
    search.finetune_space(OmegaConf.create({"backbone": {"pretrained": "/some/checkpoint.ckpt"}}), trial)
    assert set(trial.params) == {
        "finetune.lr_mult",
        "finetune.freeze",
        "finetune.unfreeze_at_epoch",
        "finetune.unfreeze_at_share",
    }
    assert 0.01 <= trial.params["finetune.lr_mult"] <= 1.0


def test_rerun_overrides_keep_the_budget_drop_the_search():
    trial = [
        "optimizer.lr=0.01",
        "augment=light",
        "train.test_after=False",
        "hparams_search=classification_optuna",
        "data.root=/d",
    ]

    def written(budget: str) -> dict:  # the train block of a trial's config.yaml
        return {
            "train": {
                "_target_": "mbtasks.modes.train.TrainSettings",
                "time": budget,
                "val_share": 0.1,
                "test_after": False,
            }
        }

    assert search.rerun_overrides(trial, written("2m")) == [
        "optimizer.lr=0.01",
        "augment=light",
        "data.root=/d",
        "train.time=2m",
    ]
    assert search.rerun_overrides(trial + ["train.time=5m"], written("5m"))[-1] == "train.time=5m"
    # hparams_search=detection_optuna chose the task: the rerun must name it
    assert search.rerun_overrides(trial, written("2m"), "detection")[0] == "task=detection"
    assert search.rerun_overrides(["task=embedding", *trial], written("2m"), "embedding").count("task=embedding") == 1


def test_missing_plugin_says_what_to_install():
    err = MissingConfigException(
        "In 'hydra/config': Could not find 'hydra/sweeper/optuna'",
        missing_cfg_file="hydra/sweeper/optuna",
        options=["basic"],
    )
    message = command_line_error(err, ["hparams_search=classification_optuna"])
    assert "pip install 'mbtasks[search]'" in message


@needs_plugin
def test_two_trial_search_through_the_cli(tmp_path):
    """A real 2-trial search: each trial's value is its best validation top-1, trials skip the test,
    and best_overrides.txt composes to the best trial's config."""
    from mbtasks.data.synthetic.shapes import make_shapes_classification

    root = make_shapes_classification(
        tmp_path / "shapes",
        classes=["circle", "square", "triangle"],
        train_per_class=8,
        val_per_class=3,
        test_per_class=3,
        image_size=32,
        seed=1,
    )
    sweep = tmp_path / "sweep"
    args = [
        "hparams_search=classification_optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        f"data.root={root}",
        "data.generator=null",
        "data.image_size=32",
        "backbone.width=0.25",
        "backbone.pretrained=null",
        "train.time=null",
        "trainer.max_epochs=2",
        "task.log_images=0",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        "callbacks.plots.enabled=false",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "mbtasks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = yaml.safe_load((sweep / search.RESULTS).read_text())
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in trials] == ["0", "1"]
    best_val = []
    for trial in trials:
        metrics = json.loads((trial / "metrics.json").read_text())
        assert not any(k.startswith("test/") for k in metrics)  # train.test_after=false: no final test
        epochs = [json.loads(line) for line in (trial / "epochs.jsonl").read_text().splitlines()]
        best_val.append(max(r["val/acc_top1"] for r in epochs if "val/acc_top1" in r))
    assert results["best_value"] == pytest.approx(max(best_val))
    assert math.isfinite(results["best_value"])

    # best_overrides.txt reruns the best trial as a plain training run (composed here)
    overrides = (sweep / search.BEST_OVERRIDES).read_text().split()
    assert not any(o.startswith(("hparams_search=", "train.test_after=")) for o in overrides)
    assert overrides[0] == "task=classification"  # the task hparams_search chose
    rerun = compose_cfg(overrides, fast=False)
    best_config = yaml.safe_load((sweep / search.BEST_CONFIG).read_text())
    assert rerun.train.test_after is True and "optimized_metric" not in rerun
    for key, value in results["best_params"].items():
        if key == "augment":  # a group: its choice shows in the composed transforms
            continue
        assert OmegaConf.select(rerun, key) == pytest.approx(value), key
        assert OmegaConf.select(OmegaConf.create(best_config), key) == pytest.approx(value), key
    assert OmegaConf.to_container(rerun.data.train_transforms, resolve=True) == best_config["data"]["train_transforms"]
