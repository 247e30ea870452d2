"""Atomic file writes: the one place run-dir files, checkpoints and exports reach their final name.

Every writer goes through :func:`atomic_path`: the data goes to ``.<name>.tmp-<pid>`` beside the
target, is fsynced, then renamed over it (``os.replace`` is atomic on POSIX and Windows), and the
folder is fsynced so the rename survives a power cut. A reader (or a resume after a crash) sees the
old complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

TMP = ".{name}.tmp-{pid}{tag}"
# What a run writes and reads back (resume, mbtasks.load, the recipe comparisons): no output of any
# mode may take these names, wherever they are (see run_record).
RUN_RECORDS = ("config.yaml", "metrics.json", "epochs.jsonl")
CHECKPOINT_SUFFIX = ".ckpt"
# without a way to ask whether a process lives (not POSIX): a temporary this old is stale
STALE_AGE_S = 24 * 3600


def temporary_sibling(path: str | Path, tag: str = "") -> Path:
    """``.<name>.tmp-<pid>[-tag]<suffix>`` beside ``path`` (what :func:`remove_stale_temporaries` cleans)."""
    path = Path(path)
    suffix = path.suffix if tag else ""
    stem = path.stem if tag else path.name
    return path.with_name(TMP.format(name=stem, pid=os.getpid(), tag=f"-{tag}{suffix}" if tag else ""))


def fsync_dir(folder: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on a clean exit it becomes ``path``.

    On an exception the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def finite_json(payload: Any) -> Any:
    """``payload`` with NaN / infinite floats as ``None``: ``json.dumps`` would write ``NaN``, which is not JSON."""
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, dict):
        return {k: finite_json(v) for k, v in payload.items()}
    if isinstance(payload, list | tuple):
        return [finite_json(v) for v in payload]
    return payload


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """JSON (indented, sorted keys, non-finite numbers as ``null``) written atomically."""
    write_text_atomic(path, json.dumps(finite_json(payload), indent=2, sort_keys=True, allow_nan=False))


def save_torch_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` written atomically (a kill mid-save never leaves a truncated checkpoint)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def run_record(path: str | Path) -> str | None:
    """What run record ``path`` names, or ``None``: a checkpoint (any ``*.ckpt``), a run's
    ``config.yaml`` / ``metrics.json`` / ``epochs.jsonl``, or Hydra's copy of a run's config
    (anything in a ``.hydra`` folder). Judged by name, so a record a running or killed run has
    not written yet is protected too."""
    path = Path(path)
    if path.suffix.lower() == CHECKPOINT_SUFFIX:
        return "a checkpoint (*.ckpt)"
    if path.name in RUN_RECORDS:
        return f"a run's {path.name}"
    if ".hydra" in path.parent.parts:
        return "a run's Hydra record (.hydra/)"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_siblings(path: str | Path) -> list[Path]:
    """Delete the temporaries of ``path`` (``.<name>.tmp-<pid>...``, ``.<stem>.tmp-<pid>-<tag>...``) that
    a killed process left: those whose process is gone (or, where that cannot be asked, a day old).
    A live process's temporaries (a concurrent write) are kept. Returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.(?:{re.escape(path.name)}|{re.escape(path.stem)})\.tmp-(\d+)(?:$|-)")
    removed = []
    for p in sorted(path.parent.iterdir()):
        match = pattern.match(p.name)
        if not match or not p.is_file() or int(match.group(1)) == os.getpid():
            continue
        if os.name == "posix":
            stale = not _alive(int(match.group(1)))
        else:  # os.kill(pid, 0) would terminate the process on Windows
            stale = time.time() - p.stat().st_mtime > STALE_AGE_S
        if stale:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete ``.*.tmp-<pid>`` files a killed write left in ``folder``; returns what was removed."""
    folder = Path(folder)
    stale = sorted(folder.glob(".*.tmp-*")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def unique_name(used: set[str], name: str, index: int) -> str:
    """``name``, or ``<index:05d>_<name>`` when an earlier output already took it; recorded in ``used``."""
    out = name if name not in used else f"{index:05d}_{name}"
    used.add(out)
    return out
