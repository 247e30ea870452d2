"""``python -m mbtasks [key=value ...]``: the Hydra entry point; dispatches on ``cfg.mode``."""

from __future__ import annotations

import importlib
import itertools
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from mbtasks.config import CONFIG_DIR, misspelled_keys, validate
from mbtasks.errors import ConfigError, UserError
from mbtasks.resume import resume_config

log = logging.getLogger("mbtasks")


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
    from mbtasks.resume import LAST, wants_resume

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
    validate(cfg)
    from mbtasks.tasks import check_checkpoint_task

    check_checkpoint_task(cfg, any(o.split("=", 1)[0].lstrip("+") == "task" for o in overrides))
    module = importlib.import_module(f"mbtasks.modes.{cfg.mode}")
    return module.run(cfg, run_dir, overrides)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        run_dir = claim_run_dir(cfg, Path(hc.runtime.output_dir))
        dispatch(cfg, run_dir, list(hc.overrides.task))
    except (UserError, InstantiationException, FileNotFoundError) as err:
        if os.environ.get("MBTASKS_DEBUG"):
            raise
        if isinstance(err, InstantiationException) and isinstance(err.__cause__, UserError):
            err = err.__cause__  # our message, without Hydra's "Error in call to target ..." wrapping
        log.error("%s", err)
        print(f"error: {err}\n(set MBTASKS_DEBUG=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    try:
        _hydra_main()
    except SystemExit as exit_:
        if exit_.code not in (0, None, 2):
            for hint in misspelled_keys(sys.argv[1:], CONFIG_DIR):
                print(f"hint: {hint}", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
