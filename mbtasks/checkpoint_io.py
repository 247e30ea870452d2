"""Checkpoint files written atomically: a kill during a save never leaves a truncated checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``.<name>.tmp-<pid>`` beside ``path``, fsync, then rename over ``path``.

    ``os.replace`` is atomic on POSIX and Windows, so readers (and a resume after a crash)
    see either the old complete file or the new complete file, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # The rename itself must reach the disk too, or a power cut can bring the old name back.
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete ``.*.tmp-<pid>`` files a killed save left in ``folder``; returns what was removed."""
    folder = Path(folder)
    stale = sorted(folder.glob(".*.tmp-*")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with :func:`save_atomic` for local paths.

    Lightning's own ``TorchCheckpointIO`` writes straight to the final name, so a kill
    mid-save leaves a truncated ``last.ckpt`` that cannot resume. Remote URLs
    (``s3://``...) keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomic(checkpoint, path)
        return None
