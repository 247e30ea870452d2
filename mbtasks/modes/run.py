"""Running a mode: the run dir it writes into, then ``mbtasks.modes.<mode>.run`` (the CLI and the
Python API share this)."""

from __future__ import annotations

import itertools
import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from mbtasks.backbones.weights import published
from mbtasks.config import validate
from mbtasks.errors import ConfigError
from mbtasks.modes import check, convert, export, predict, profile, test, train
from mbtasks.pretraining import named_checkpoint, prepare
from mbtasks.resume import LAST, resume_config, wants_resume
from mbtasks.tasks import check_checkpoint_task

log = logging.getLogger("mbtasks")

# mode -> run(cfg, run_dir, overrides) (config.MODES lists the same names for validation)
RUNNERS = {"train": train.run, "test": test.run, "predict": predict.run, "profile": profile.run,
           "export": export.run, "check": check.run, "convert": convert.run}


def records_in(run_dir: Path) -> list[str]:
    """What ``run_dir`` holds besides Hydra's own files (``.hydra/``, ``*.log``): another run's records."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log")


def claim_run_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """The dir this run writes into: never one that holds another run's records.

    Two runs started in the same second share Hydra's dated dir, and ``hydra.run.dir`` may name
    an old run. A new ``mode=train`` refuses such a dir (``resume=`` continues one); every other
    mode writes into a fresh ``<run_dir>/<mode>`` (``<mode>-2``...) sub-directory and says so,
    so ``metrics.json`` / ``config.yaml`` of the run there (what resume reads) stay untouched.
    DDP ranks launched by rank 0 (``LOCAL_RANK`` > 0) use the dir rank 0 chose.
    """
    used = records_in(run_dir)
    # A lone config.yaml is a run that stopped at start-up (bad data path...): nothing to keep.
    if used in ([], ["config.yaml"]) or wants_resume(cfg) or int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) or 0) > 0:
        return run_dir
    mode = str(cfg.get("mode"))
    if mode == "train":
        if (run_dir / LAST).exists() or (run_dir / "metrics.json").exists():
            raise ConfigError(f"{run_dir} already holds a training run's outputs; continue it with resume={run_dir} "
                              "or give a new hydra.run.dir")
        raise ConfigError(f"{run_dir} already holds other files ({', '.join(used[:5])}); a new training run needs "
                          "an empty dir: give a new hydra.run.dir")
    for n in itertools.count(1):
        sub = run_dir / (mode if n == 1 else f"{mode}-{n}")
        if not sub.exists():
            break
    sub.mkdir(parents=True)
    log.warning("%s already holds another run's outputs (%s): mode=%s writes into %s", run_dir,
                ", ".join(used[:5]), mode, sub)
    print(f"note: {run_dir} holds another run's outputs; this mode={mode} run writes into {sub}", file=sys.stderr)
    return sub


def dispatch(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    """Validate the config, then run ``mbtasks.modes.<mode>.run``."""
    cfg, run_dir = resume_config(cfg, run_dir, overrides)
    if not wants_resume(cfg):
        prepare(cfg, overrides)
    if published.parse_name(cfg.get("ckpt_path")) is not None:
        if cfg.get("mode") == "train":
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} is a published classifier: to train from its weights give "
                              f"backbone.pretrained=imagenet with the same backbone and width")
        cfg.ckpt_path = str(named_checkpoint(cfg.ckpt_path))
    validate(cfg)
    check_checkpoint_task(cfg, any(o.split("=", 1)[0].lstrip("+") == "task" for o in overrides))
    return RUNNERS[cfg.mode](cfg, run_dir, overrides)
