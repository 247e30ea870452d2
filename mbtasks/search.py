"""Hyperparameter search (``-m hparams_search=<task>_optuna``, Hydra's Optuna sweeper plugin).

Three pieces the sweep configs in ``conf/hparams_search/`` name:

- :func:`objective`: the number a trial returns to the sweeper, the best value of the config's
  ``optimized_metric`` (a ``val/`` key) over the run's validation epochs (``epochs.jsonl``), never
  a test metric.
- :func:`finetune_space`: the sweeper's ``custom_search_space``; adds the ``finetune`` settings to
  the search only for a pretrained backbone (freezing random weights is refused, and from scratch
  they change nothing).
- :class:`BestTrial`: a Hydra callback that writes ``best_overrides.txt`` (rerun the best trial with
  ``python -m mbtasks $(cat <sweep dir>/best_overrides.txt)``) and ``best_config.yaml`` (its
  resolved config) into the sweep dir when the search ends.

The plugin (1.2 / 1.3) asks Optuna for trials and tells it each trial's final value after the job
returns; the job never sees the Optuna trial, so it cannot report intermediate values: no pruning.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mbtasks.backbones.pretrained import is_active
from mbtasks.callbacks.epoch_log import EPOCH_LOG, read_epoch_log
from mbtasks.errors import ConfigError
from mbtasks.modes.train import train_settings
from mbtasks.pretraining import given_keys, resolve_auto

log = logging.getLogger(__name__)

RESULTS = "optimization_results.yaml"  # what the Optuna sweeper writes into the sweep dir
BEST_OVERRIDES = "best_overrides.txt"
BEST_CONFIG = "best_config.yaml"


def objective(cfg: DictConfig, run_dir: Path, metrics: dict, maximize: bool = True) -> float | None:
    """The value a search trial returns: the best ``cfg.optimized_metric`` over the run's validations.

    Args:
        cfg: the trial's config; ``optimized_metric`` names a ``val/`` metric (None: not a search).
        run_dir: the trial's run dir (its ``epochs.jsonl`` holds every validation's metrics).
        metrics: what the mode returned (its final values, used when no epoch was logged).
        maximize: the sweeper's direction (``hydra.sweeper.direction``).

    Returns:
        The best (highest when maximizing, else lowest) value, or None
        when ``optimized_metric`` is not set.
    """
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    if not str(key).startswith("val/"):
        raise ConfigError(
            f"optimized_metric={key}: a search is scored on validation; give a val/ metric, "
            f"e.g. val/acc_top1, val/map_50, val/verification_acc"
        )
    values = [float(r[key]) for r in read_epoch_log(run_dir / EPOCH_LOG) if r.get(key) is not None]
    if not values and metrics.get(key) is not None:
        values = [float(metrics[key])]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        known = sorted(k for k in metrics if k.startswith("val/"))
        raise ConfigError(f"optimized_metric={key}: the run logged no such validation metric; it logged {known}")
    return max(values) if maximize else min(values)


def finetune_space(cfg: DictConfig, trial: Any) -> None:
    """Suggest the ``finetune`` settings when the backbone starts from pretrained weights.

    Called by the Optuna sweeper once per trial (``hydra.sweeper.custom_search_space``) with the
    search's config; ``backbone.pretrained=auto`` is resolved as a training run would resolve it.
    """
    spec = OmegaConf.select(cfg, "backbone.pretrained", default=None)
    if isinstance(spec, str) and spec.lower() == "auto":
        spec = resolve_auto(cfg)
    if not is_active(spec):
        return
    trial.suggest_float("finetune.lr_mult", 0.01, 1.0, log=True)
    # frozen backbone for the first 1-3 epochs or 2-30% of the steps, whichever is shorter (head warm-up),
    # or trained from the start
    trial.suggest_categorical("finetune.freeze", [True, False])
    trial.suggest_int("finetune.unfreeze_at_epoch", 1, 3)
    trial.suggest_float("finetune.unfreeze_at_share", 0.02, 0.3, log=True)


def _parse(overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "augment=light"]`` -> ``{"a.b": 1, "augment": "light"}`` (Hydra's own parser)."""
    return {o.get_key_element(): o.value() for o in OverridesParser.create().parse_overrides(overrides)}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return a == b or str(a) == str(b)


def best_trial_dir(sweep_dir: Path, best_params: dict) -> Path | None:
    """The trial dir (``<sweep dir>/<n>``) whose overrides hold ``best_params`` (None: not found)."""
    for trial in sorted(
        (p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()), key=lambda p: p.name
    ):
        given = _parse(yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text()) or [])
        if all(k in given and _same(given[k], v) for k, v in best_params.items()):
            return trial
    return None


def rerun_overrides(trial_overrides: list[str], trial_config: dict | None, task: str | None = None) -> list[str]:
    """The best trial's command line as a plain training run (``hparams_search`` and the trials'
    ``train.test_after=false`` left out), with the task the search chose (``hparams_search`` selected it,
    so leaving it out would train the default task) and the trials' ``train.time`` budget kept (the
    chosen settings were found for it)."""
    out = [o for o in trial_overrides if not given_keys([o]) & {"hparams_search", "train.test_after"}]
    if task and "task" not in given_keys(out):
        out.insert(0, f"task={task}")
    budget = train_settings(trial_config).time if trial_config else None
    if budget is not None and "train.time" not in given_keys(out):
        out.append(f"train.time={budget}")
    return out


class BestTrial(Callback):
    """Writes ``best_overrides.txt`` (one override a line) and ``best_config.yaml`` into the sweep dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = sweep_dir / RESULTS
        if not results.is_file():
            log.warning("no %s in %s: no best trial to write", RESULTS, sweep_dir)
            return
        best = yaml.safe_load(results.read_text()) or {}
        trial = best_trial_dir(sweep_dir, best.get("best_params") or {})
        if trial is None:
            log.warning("no trial in %s has the best parameters %s", sweep_dir, best.get("best_params"))
            return
        overrides = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text()) or []
        config_file = trial / "config.yaml"
        trial_config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
        # the group choices of the trial's own run (hparams_search=<task>_optuna picked the task)
        hydra_file = trial / ".hydra" / "hydra.yaml"
        task = (
            OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices.task") if hydra_file.is_file() else None
        )
        (sweep_dir / BEST_OVERRIDES).write_text("\n".join(rerun_overrides(overrides, trial_config, task)) + "\n")
        if config_file.is_file():
            shutil.copyfile(config_file, sweep_dir / BEST_CONFIG)
        log.info(
            "best trial: %s (%s %s); rerun it: python -m mbtasks $(cat %s)",
            trial,
            config.get("optimized_metric"),
            best.get("best_value"),
            sweep_dir / BEST_OVERRIDES,
        )
