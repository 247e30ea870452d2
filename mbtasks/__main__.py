"""``python -m mbtasks [key=value ...]``: the Hydra entry point; runs ``cfg.mode`` (:mod:`mbtasks.modes.run`).

``python -m mbtasks weights ...`` lists and converts published ImageNet weights (:mod:`mbtasks.weights_cli`)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from mbtasks import weights_cli
from mbtasks.config import CONFIG_DIR, misspelled_keys
from mbtasks.errors import UserError
from mbtasks.modes.run import claim_run_dir, dispatch

log = logging.getLogger("mbtasks")


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
    if sys.argv[1:2] == ["weights"]:
        sys.exit(weights_cli.main(sys.argv[2:]))
    try:
        _hydra_main()
    except SystemExit as exit_:
        if exit_.code not in (0, None, 2):
            for hint in misspelled_keys(sys.argv[1:], CONFIG_DIR):
                print(f"hint: {hint}", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
