"""``python -m mbtasks [key=value ...]``: the Hydra entry point; dispatches on ``cfg.mode``."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from mbtasks.config import misspelled_keys, validate
from mbtasks.errors import ConfigError, UserError
from mbtasks.resume import resume_config

log = logging.getLogger("mbtasks")

_PACKAGED_CONF = Path(__file__).parent / "conf"
CONFIG_DIR = str(_PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).parent.parent / "conf")


def refuse_used_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """A new training run must not write over another run's outputs (two runs started in the same
    second share Hydra's dated dir; ``hydra.run.dir`` may name an old run)."""
    from mbtasks.resume import LAST, wants_resume

    if cfg.get("mode") == "train" and not wants_resume(cfg) and ((run_dir / LAST).exists() or (run_dir / "metrics.json").exists()):
        raise ConfigError(f"{run_dir} already holds a training run's outputs; continue it with resume={run_dir} "
                          "or give a new hydra.run.dir")


def dispatch(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    """Validate the config, then run ``mbtasks.modes.<mode>.run``."""
    cfg, run_dir = resume_config(cfg, run_dir, overrides)
    validate(cfg)
    module = importlib.import_module(f"mbtasks.modes.{cfg.mode}")
    return module.run(cfg, run_dir, overrides)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        refuse_used_run_dir(cfg, Path(hc.runtime.output_dir))
        dispatch(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task))
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
