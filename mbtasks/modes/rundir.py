"""What a run writes into its run dir besides checkpoints: ``config.yaml`` and ``metrics.json`` (rank 0 only),
and the lock that keeps two runs out of one dir (:func:`lock_run_dir`)."""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mbtasks.atomic_files import write_json_atomic, write_text_atomic
from mbtasks.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL marker below
    fcntl = None

# The lock file a running run holds in its dir (not a record: a dir holding only it is unused).
LOCK = ".mbtasks.lock"


def is_rank_zero() -> bool:
    """True in the process that writes run-dir files (rank 0 of DDP / torchrun / SLURM, or the only one).

    Under DDP every rank runs the mode; files other than checkpoints (which Lightning saves on
    rank 0) are written by rank 0 only, into the one run dir Lightning passes to every rank.
    """
    # before the Trainer sets rank_zero_only.rank, another node's first process has only NODE_RANK / GROUP_RANK
    other_node = any(int(os.environ.get(key, "0") or 0) > 0 for key in ("NODE_RANK", "GROUP_RANK"))
    return getattr(rank_zero_only, "rank", 0) == 0 and not other_node


def to_float_dict(metrics: Mapping) -> dict[str, float | str | None]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, str | list):  # e.g. "test/split", "warnings" (a list of texts)
            out[str(key)] = value
            continue
        v = float(value.item() if hasattr(value, "item") else value)
        out[str(key)] = v if math.isfinite(v) else None
    return out


def write_metrics(run_dir: Path, metrics: Mapping) -> dict[str, float | str | None]:
    """``run_dir/metrics.json``: a flat object of namespaced final metrics (``test/acc_top1``...)."""
    flat = to_float_dict(metrics)
    if is_rank_zero():
        write_json_atomic(run_dir / "metrics.json", flat)
    return flat


def read_metrics(run_dir: Path) -> dict:
    """``run_dir/metrics.json`` as written by :func:`write_metrics` (``{}`` when missing or unreadable)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """``run_dir/config.yaml``, the resolved config (what ``resume=`` reads back), written atomically."""
    if is_rank_zero():
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


class RunDirInUse(ConfigError):
    """Another live run holds the dir's lock; ``holder`` is what it wrote there (pid, host, mode...)."""

    def __init__(self, run_dir: Path, holder: dict, hint: str = "") -> None:
        self.run_dir, self.holder = run_dir, holder
        who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "started") if holder.get(k))
        command = f": {holder['command']}" if holder.get("command") else ""
        super().__init__(
            f"{run_dir} is in use by another run ({who or 'details unknown'}{command}); give "
            f"another hydra.run.dir, or wait until that run has ended{hint}"
        )


class RunDirLock:
    """The lock of one run dir, held until :meth:`release` (or until the process dies)."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self.fd = path, fd  # fd None: the O_EXCL marker fallback

    def release(self) -> None:
        """Remove the lock file, then unlock (in that order: a run that opened the old file re-checks the path)."""
        try:
            if self.fd is not None and _same_file(self.path, self.fd):
                self.path.unlink(missing_ok=True)
            elif self.fd is None and _read_holder(self.path).get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
        finally:
            if self.fd is not None:
                os.close(self.fd)  # closing drops the flock
                self.fd = None


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _holder(mode: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "mode": mode,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def lock_run_dir(run_dir: Path, mode: str = "") -> RunDirLock:
    """Take ``run_dir``'s lock, or raise :class:`RunDirInUse` naming the run that holds it.

    An exclusive ``flock`` on ``<run_dir>/.mbtasks.lock``: atomic, and released by the kernel when
    the holder exits or is killed, so a crashed run never blocks its dir (its leftover file is
    simply locked again). The file records pid, host, mode, start time and command line for the
    refusal message, and is removed when the run ends. Where ``flock`` is missing or unsupported
    (Windows, some network file systems) the file itself is the lock, created atomically with its
    content (``os.link``, which fails on an existing name, like ``O_EXCL``); one left by a dead pid
    on this host is taken over, one from another host must be removed by hand (the message names it).

    Raises:
        RunDirInUse: another live run holds the lock.
        ConfigError: the dir cannot be created or written.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot use {run_dir} as the run dir: {err.strerror or err} ({err.filename}); "
            "give a folder that can be created and written"
        ) from err
    path = run_dir / LOCK
    if fcntl is None:
        return _lock_by_marker(run_dir, path, mode)
    for _ in range(10):  # again only when the holder removed the file between our open and our flock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(
                f"cannot write in the run dir {run_dir}: {err.strerror or err}; give a writable hydra.run.dir"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirInUse(run_dir, _read_holder(path)) from None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return _lock_by_marker(run_dir, path, mode)
            raise
        if _same_file(path, fd):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_holder(mode)).encode())
            return RunDirLock(path, fd)
        os.close(fd)
    raise RunDirInUse(run_dir, _read_holder(path))


def _lock_by_marker(run_dir: Path, path: Path, mode: str) -> RunDirLock:
    """The fallback: ``path`` appears atomically with its content (written aside, then hard-linked)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(_holder(mode)))
    try:
        for _ in range(3):
            try:
                os.link(tmp, path)
                return RunDirLock(path, None)
            except FileExistsError:
                holder = _read_holder(path)
                # empty: left by a flock probe, never by a marker (they appear with their content)
                if not holder or (holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid"))):
                    path.unlink(missing_ok=True)  # stale: its run died without releasing it
                    continue
                raise RunDirInUse(run_dir, holder, f" (if it is gone, delete {path})") from None
        raise RunDirInUse(run_dir, _read_holder(path))
    finally:
        tmp.unlink(missing_ok=True)
