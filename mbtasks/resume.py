"""``resume=<run dir>``: continue a killed training run in its own run dir from ``checkpoints/last.ckpt``;
a finished one is left as it is unless ``trainer.max_epochs`` asks for more."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mbtasks import checkpoint
from mbtasks.checkpoint import upgrade_config
from mbtasks.errors import ConfigError
from mbtasks.modes.rundir import read_metrics
from mbtasks.modes.train import STEPS_KEY, train_settings

log = logging.getLogger("mbtasks")

LAST = Path("checkpoints") / "last.ckpt"
# Keys of the new command line that say *how* to resume rather than change the run.
_RESUME_KEYS = ("resume", "ckpt_path", "mode")


def run_dir_for(resume, default: str) -> str:
    """Hydra's run dir: the old run's dir for ``resume=<dir>``, else the usual dated one."""
    if isinstance(resume, str) and resume.strip() and resume.lower() not in ("true", "false", "null"):
        return resume
    return default


def wants_resume(cfg: DictConfig) -> bool:
    resume = cfg.get("resume")
    return (resume not in (None, False, "", "false")) or cfg.get("ckpt_path") == "last"


def resume_config(cfg: DictConfig, run_dir: Path, overrides=()) -> tuple[DictConfig, Path]:
    """The config and run dir a resumed run continues with.

    ``resume=<run dir>`` (or ``resume=true`` / ``ckpt_path=last`` with ``hydra.run.dir=<run dir>``)
    takes the run's own ``config.yaml``, applies the ``a.b=value`` keys of the new command
    line on top (``trainer.max_epochs=20`` extends a run) and points ``ckpt_path`` at
    ``<run dir>/checkpoints/last.ckpt``. A run dir without ``config.yaml`` resumes with the config
    stored in ``last.ckpt`` (every checkpoint holds it), with a warning naming the dir.

    Raises:
        ConfigError: not mode=train, no ``last.ckpt`` in the run dir, neither ``config.yaml`` nor a
            config in ``last.ckpt``, or a config group (``task=``, ``backbone=``...) changed on the
            command line.
    """
    if not wants_resume(cfg):
        return cfg, run_dir
    resume = cfg.get("resume")
    if cfg.get("mode") != "train":
        raise ConfigError(f"resume={resume!r}: resuming continues training; use it with mode=train")
    run_dir = Path(run_dir_for(resume, str(run_dir)))
    last = run_dir / LAST
    if not last.is_file():
        raise ConfigError(
            f"resume={resume!r}: {last} not found; resume=<run dir> needs the dir of a "
            f"mode=train run (outputs/<task>/<date>/<time>) that wrote checkpoints/last.ckpt"
        )
    saved = run_dir / "config.yaml"
    if saved.is_file():
        # a run dir of an older version names old keys and targets: read it in today's shape
        base = OmegaConf.create(upgrade_config(OmegaConf.to_container(OmegaConf.load(saved))))
    else:
        # every checkpoint stores the resolved run config (read() upgrades it): the same record
        stored = checkpoint.read(last, "resume")[checkpoint.KEY].get("config")
        if not stored:
            raise ConfigError(
                f"resume={resume!r}: {run_dir} has no config.yaml and {last} stores no run config: "
                "resume=<run dir> needs the dir of a mode=train run"
            )
        log.warning("%s has no config.yaml (the run's record): resuming with the config stored in %s", run_dir, last)
        base = OmegaConf.create(stored)
    # train keys added since the run was written (train.val_share, train.test_after) take today's defaults
    base.train = OmegaConf.merge(cfg.train, base.get("train") or {})
    for item in overrides:
        key = item.partition("=")[0].lstrip("+~")
        if key in _RESUME_KEYS or key.startswith("hydra."):
            continue
        if isinstance(OmegaConf.select(cfg, key), DictConfig):
            raise ConfigError(
                f"{item}: a config group cannot change when resuming {run_dir}; "
                f"change single keys ({key}.<name>=value) or start a new run"
            )
        OmegaConf.update(base, key, OmegaConf.select(cfg, key), force_add=True)
    base.mode = "train"
    base.resume = str(run_dir)
    base.ckpt_path = str(last)
    return base, run_dir


def finished_run(cfg: DictConfig, run_dir: Path, overrides=()) -> str | None:
    """For ``resume=`` of a run that has finished: a note saying so (nothing is to be done), else None.

    A run has finished when its ``metrics.json`` is there (mode=train writes it once, after the
    final test) and ``last.ckpt`` is no further on than the step it records (``train/steps``; a
    run extended after finishing and then killed is resumed). It trains on only when asked:
    ``trainer.max_epochs=N`` on the command line, N above the epochs it trained (with
    ``train.time=null`` for a run planned by ``train.time``, whose LR schedule ended with its budget).
    Its ``metrics.json`` and checkpoints are then replaced by the longer run's, as any run's are.

    Args:
        cfg: the resumed config (:func:`resume_config`'s, command-line keys applied).
        run_dir: the run's dir.
        overrides: the command line.

    Raises:
        ConfigError: the command line asks for more training of a finished ``train.time`` run
            without ``train.time=null``.
    """
    if not (run_dir / "metrics.json").is_file():
        return None
    metrics = read_metrics(run_dir)
    ckpt = checkpoint.load_weights_only(run_dir / LAST, "resume", "expected the last.ckpt of a mode=train run")
    step, epochs = int(ckpt.get("global_step") or 0), int(ckpt.get("epoch", -1)) + 1
    recorded = metrics.get(STEPS_KEY)
    if isinstance(recorded, int | float) and step > recorded:
        return None
    given = {item.partition("=")[0].lstrip("+~") for item in overrides}
    budget = train_settings(cfg).time
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    what = f"{run_dir} is a finished run ({epochs} epoch{'s' * (epochs != 1)}, {step} steps, then tested: metrics.json)"
    more = f"resume={run_dir} trainer.max_epochs=N" + (" train.time=null" if budget else "") + f" (N > {epochs})"
    if "trainer.max_epochs" in given and isinstance(max_epochs, int) and max_epochs > epochs:
        if budget:
            raise ConfigError(
                f"trainer.max_epochs={max_epochs}: {what} trained under train.time={budget}, which sets "
                f"its own epochs; to train it further give {more}"
            )
        return None
    if "train.time" in given and budget:
        raise ConfigError(
            f"train.time={budget}: {what}; its LR schedule ended with its budget, so a new budget "
            f"cannot extend it: to train it further give {more}"
        )
    asked = f"; trainer.max_epochs={max_epochs} is not more than it trained" if "trainer.max_epochs" in given else ""
    return f"{what}: nothing to resume, it is left as it is{asked}. To train it further: {more}"
