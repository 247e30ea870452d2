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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

TMP = ".{name}.tmp-{pid}{tag}"


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
