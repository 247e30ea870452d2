"""``resume=<run dir>``: continue a killed training run in its own run dir from ``checkpoints/last.ckpt``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mbtasks.checkpoint import upgrade_config
from mbtasks.errors import ConfigError

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
    ``<run dir>/checkpoints/last.ckpt``.

    Raises:
        ConfigError: not mode=train, no ``last.ckpt`` in the run dir, or a config group
            (``task=``, ``backbone=``...) changed on the command line.
    """
    if not wants_resume(cfg):
        return cfg, run_dir
    resume = cfg.get("resume")
    if cfg.get("mode") != "train":
        raise ConfigError(f"resume={resume!r}: resuming continues training; use it with mode=train")
    run_dir = Path(run_dir_for(resume, str(run_dir)))
    last = run_dir / LAST
    if not last.is_file():
        raise ConfigError(f"resume={resume!r}: {last} not found; resume=<run dir> needs the dir of a "
                          f"mode=train run (outputs/<task>/<date>/<time>) that wrote checkpoints/last.ckpt")
    saved = run_dir / "config.yaml"
    # a run dir of an older version names old keys and targets: read it in today's shape
    base = OmegaConf.create(upgrade_config(OmegaConf.to_container(OmegaConf.load(saved)))) if saved.is_file() else cfg.copy()
    for item in overrides:
        key = item.partition("=")[0].lstrip("+~")
        if key in _RESUME_KEYS or key.startswith("hydra."):
            continue
        if isinstance(OmegaConf.select(cfg, key), DictConfig):
            raise ConfigError(f"{item}: a config group cannot change when resuming {run_dir}; "
                              f"change single keys ({key}.<name>=value) or start a new run")
        OmegaConf.update(base, key, OmegaConf.select(cfg, key), force_add=True)
    base.mode = "train"
    base.resume = str(run_dir)
    base.ckpt_path = str(last)
    return base, run_dir
