"""Running a mode: the run dir it writes into, then ``mbtasks.modes.<mode>.run`` (the CLI and the
Python API share this)."""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from mbtasks.backbones.weights import published
from mbtasks.config import validate
from mbtasks.errors import ConfigError, suggest
from mbtasks.modes import check, convert, export, predict, profile, test, train
from mbtasks.modes.rundir import LOCK, RunDirInUse, RunDirLock, lock_run_dir, read_metrics
from mbtasks.pretraining import named_checkpoint, prepare
from mbtasks.resume import LAST, finished_run, resume_config, run_dir_for, wants_resume
from mbtasks.tasks import check_checkpoint_task

log = logging.getLogger("mbtasks")

# mode -> run(cfg, run_dir, overrides): the modes there are
RUNNERS = {
    "train": train.run,
    "test": test.run,
    "predict": predict.run,
    "profile": profile.run,
    "export": export.run,
    "check": check.run,
    "convert": convert.run,
}


def runner(mode) -> Callable[..., dict]:
    """The run function of ``mode``; :class:`ConfigError` naming the modes for any other value."""
    if not isinstance(mode, str) or mode not in RUNNERS:
        raise ConfigError(f"mode={mode!r}: expected one of {list(RUNNERS)}.{suggest(mode, RUNNERS)}")
    return RUNNERS[mode]


def records_in(run_dir: Path) -> list[str]:
    """What ``run_dir`` holds besides Hydra's own files (``.hydra/``, ``*.log``) and the run lock: another
    run's records."""
    if not run_dir.is_dir():
        return []
    return sorted(
        p.name for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log" and not p.name.startswith(LOCK)
    )


# run dir handed out by claim_run_dir -> the lock it holds (released by dispatch when the mode ends)
_CLAIMS: dict[Path, RunDirLock] = {}


def _is_ddp_child() -> bool:
    """Any rank but the first: started by Lightning / torchrun (LOCAL_RANK, RANK), srun (SLURM_PROCID), or on
    another node (NODE_RANK, torchrun's GROUP_RANK), where Lightning starts local rank 0 without a RANK."""
    keys = ("LOCAL_RANK", "RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK")
    return any(int(os.environ.get(key, "0") or 0) > 0 for key in keys)


def claim_run_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """The dir this run writes into, locked for it: never one that holds another run's records,
    nor one another live run is writing into.

    Two runs started in the same second share Hydra's dated dir, and ``hydra.run.dir`` may name
    an old run or a running one. The dir is locked first (:func:`~mbtasks.modes.rundir.lock_run_dir`,
    atomic: of two runs started at once, one gets it), then looked at. A new ``mode=train`` refuses
    a dir that is in use or holds another run's records (``resume=`` continues one, once it is not
    in use); every other mode writes into a fresh ``<run_dir>/<mode>`` (``<mode>-2``...)
    sub-directory and says so, so ``metrics.json`` / ``config.yaml`` of the run there (what resume
    reads) stay untouched. The lock is held until :func:`dispatch` ends (or the process dies).
    DDP ranks launched by rank 0 (``LOCAL_RANK`` > 0) use the dir rank 0 chose.
    """
    if _is_ddp_child():
        return run_dir
    mode = str(cfg.get("mode"))
    if wants_resume(cfg):
        target = Path(run_dir_for(cfg.get("resume"), str(run_dir)))
        if target.is_dir():  # not a dir: resume_config says what is missing
            _CLAIMS[target] = lock_run_dir(target, mode)
        return target
    try:
        lock = lock_run_dir(run_dir, mode)
    except RunDirInUse as busy:
        if mode == "train":
            raise
        lock, used = None, [f"a run in progress, pid {busy.holder.get('pid', '?')}"]
    else:
        used = records_in(run_dir)
    # A lone config.yaml is a run that stopped at start-up (bad data path...): nothing to keep.
    if used in ([], ["config.yaml"]):
        _CLAIMS[run_dir] = lock
        return run_dir
    if mode == "train":
        lock.release()
        if (run_dir / LAST).exists() or (run_dir / "metrics.json").exists():
            raise ConfigError(
                f"{run_dir} already holds a training run's outputs; continue it with resume={run_dir} "
                "or give a new hydra.run.dir"
            )
        raise ConfigError(
            f"{run_dir} already holds other files ({', '.join(used[:5])}); a new training run needs "
            "an empty dir: give a new hydra.run.dir"
        )
    for n in itertools.count(1):
        sub = run_dir / (mode if n == 1 else f"{mode}-{n}")
        try:
            sub.mkdir(parents=True)  # atomic: of two runs choosing at once, each gets its own
        except FileExistsError:
            continue
        break
    _CLAIMS[sub] = lock_run_dir(sub, mode)
    if lock is not None:
        lock.release()
    log.warning(
        "%s already holds another run's outputs (%s): mode=%s writes into %s", run_dir, ", ".join(used[:5]), mode, sub
    )
    print(f"note: {run_dir} holds another run's outputs; this mode={mode} run writes into {sub}", file=sys.stderr)
    return sub


def release_run_dir(run_dir: Path) -> None:
    """Release the lock :func:`claim_run_dir` took for ``run_dir`` (nothing when it took none)."""
    lock = _CLAIMS.pop(Path(run_dir), None)
    if lock is not None:
        lock.release()


def dispatch(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    """Validate the config, then run ``mbtasks.modes.<mode>.run``; releases ``run_dir``'s claim at the end."""
    try:
        return _dispatch(cfg, run_dir, overrides)
    finally:
        release_run_dir(run_dir)


def _dispatch(cfg: DictConfig, run_dir: Path, overrides) -> dict:
    runner(cfg.get("mode"))  # an unknown mode fails before anything is prepared
    cfg, run_dir = resume_config(cfg, run_dir, overrides)
    if wants_resume(cfg):
        note = finished_run(cfg, run_dir, overrides)
        if note is not None:  # nothing to train: the run and its records stay as they are
            log.info("%s", note)
            print(f"note: {note}", file=sys.stderr)
            return read_metrics(run_dir)
    else:
        prepare(cfg, overrides)
    if published.parse_name(cfg.get("ckpt_path")) is not None:
        if cfg.get("mode") == "train":
            raise ConfigError(
                f"ckpt_path={cfg.ckpt_path} is a published classifier: to train from its weights give "
                f"backbone.pretrained=imagenet with the same backbone and width"
            )
        cfg.ckpt_path = str(named_checkpoint(cfg.ckpt_path))
    validate(cfg)
    check_checkpoint_task(cfg, any(o.split("=", 1)[0].lstrip("+") == "task" for o in overrides))
    return runner(cfg.mode)(cfg, run_dir, overrides)
