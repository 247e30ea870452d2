"""The Hydra command line behind ``python -m mbtasks``: runs ``cfg.mode`` (:mod:`mbtasks.modes.run`).

Hydra's own errors about the command line (an unknown group option, a misspelled key, an override
it cannot parse, a run dir it cannot make) become one ``error:`` line and exit code 2, like every
other user mistake, instead of Hydra's text and exit code 1.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mbtasks import search, weights_cli
from mbtasks.config import CONFIG_DIR, unknown_key
from mbtasks.data import shards
from mbtasks.errors import NonFiniteLossError, UserError, suggest
from mbtasks.modes.run import claim_run_dir, dispatch

log = logging.getLogger("mbtasks")

# Set once Hydra hands over to the run: an error raised before that is about the command line or
# the run dir, one raised after it is the run's own.
_STATE = {"started": False}


def _run(cfg: DictConfig) -> float | None:
    """Run ``cfg.mode``; with ``optimized_metric`` (``hparams_search=...``) return the trial's
    validation score to the sweeper (:func:`mbtasks.search.objective`)."""
    _STATE["started"] = True
    hc = HydraConfig.get()
    maximize = str(OmegaConf.select(hc, "sweeper.direction", default="maximize")).endswith("maximize")
    try:
        run_dir = claim_run_dir(cfg, Path(hc.runtime.output_dir))
        metrics = dispatch(cfg, run_dir, list(hc.overrides.task))
        return search.objective(cfg, run_dir, metrics, maximize)
    except (UserError, InstantiationException, FileNotFoundError) as err:
        if isinstance(err, NonFiniteLossError) and cfg.get("optimized_metric") and hc.mode == RunMode.MULTIRUN:
            # a diverging trial (LR too high) is a result, the worst one: the search goes on
            log.warning("trial diverged, scored as the worst: %s", err)
            return -math.inf if maximize else math.inf
        if os.environ.get("MBTASKS_DEBUG"):
            raise
        if isinstance(err, InstantiationException) and isinstance(err.__cause__, UserError):
            err = err.__cause__  # our message, without Hydra's "Error in call to target ..." wrapping
        log.error("%s", err)
        print(f"error: {err}\n(set MBTASKS_DEBUG=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)


# Hydra names the job, and its log file, after the task function's module: keep ``__main__.log``
# (what ``python -m mbtasks`` wrote before this module held the function).
_run.__module__ = "mbtasks.__main__"
_hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")(_run)


def _given(argv: list[str], key: str) -> str | None:
    """The ``key=value`` item of the command line for ``key`` (``+key=``, ``++key=`` too), if any."""
    return next((a for a in argv if "=" in a and a.split("=", 1)[0].lstrip("+~") == key), None)


def _first_lines(text: str) -> str:
    """Hydra's message on one line, without the config search path it appends."""
    text = text.split("Config search path:")[0]
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def command_line_error(err: HydraException, argv: list[str]) -> str:
    """One line for an error Hydra raised while composing the config from ``argv``."""
    if isinstance(err, MissingConfigException) and err.options and "/" in str(err.missing_cfg_file):
        group, _, choice = str(err.missing_cfg_file).rpartition("/")
        if group == "hydra/sweeper" and choice == "optuna":  # hparams_search=... without its plugin
            return (
                "hparams_search needs Hydra's Optuna sweeper plugin: pip install 'mbtasks[search]' "
                "(or pip install hydra-optuna-sweeper)"
            )
        item = _given(argv, group) or f"{group}={choice}"
        return f"{item}: no such {group} option; choose one of {', '.join(err.options)}.{suggest(choice, err.options)}"
    if isinstance(err, OverrideParseException):
        return f"{err.override}: cannot parse it: {_first_lines(err.message)}"
    message = str(err)
    if message.startswith("Could not override '"):
        key = message.split("'")[1]
        return unknown_key(_given(argv, key) or key, argv)
    return _first_lines(message)


def run_dir_error(err: OSError, argv: list[str]) -> str:
    """One line for a run dir Hydra could not make or write (a file, no permission...)."""
    where = err.filename or "the run dir"
    if isinstance(err, FileExistsError | NotADirectoryError):
        reason = f"{where} is a file, not a folder"
    elif isinstance(err, PermissionError):
        reason = f"no permission to write {where}"
    else:
        reason = f"{err.strerror or err}: {where}"
    resume = _given(argv, "resume")
    if resume and not _given(argv, "hydra.run.dir"):
        return (
            f"{resume}: cannot use it as the run dir ({reason}); resume=<run dir> takes the folder of a mode=train run"
        )
    item = _given(argv, "hydra.run.dir") or "the run dir (outputs/<task>/<date>/<time>)"
    return (
        f"{item}: cannot create or write the run dir there ({reason}); give hydra.run.dir=DIR, a folder that can "
        "be created and written"
    )


def os_error_behind(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (logging wraps a log file it cannot open in a ValueError), if any."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["weights"]:
        sys.exit(weights_cli.main(argv[1:]))
    if argv[:1] == ["shards"]:
        sys.exit(shards.main(argv[1:]))
    # Hydra then raises its errors instead of printing its own text and exiting with 1.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except Exception as err:
        if _STATE["started"] or os.environ.get("MBTASKS_DEBUG"):
            raise
        # (MissingConfigException is an OSError too: Hydra's errors first)
        if isinstance(err, HydraException):
            message = command_line_error(err, argv)
        elif os_error_behind(err) is not None:  # making the run dir, its log file or .hydra/ failed
            message = run_dir_error(os_error_behind(err), argv)
        else:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
