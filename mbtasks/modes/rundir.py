"""What a run writes into its run dir besides checkpoints: ``config.yaml`` and ``metrics.json`` (rank 0 only)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mbtasks.io import write_json_atomic, write_text_atomic


def is_rank_zero() -> bool:
    """True in the process that writes run-dir files (rank 0 of DDP / torchrun / SLURM, or the only one).

    Under DDP every rank runs the mode; files other than checkpoints (which Lightning saves on
    rank 0) are written by rank 0 only, into the one run dir Lightning passes to every rank.
    """
    return getattr(rank_zero_only, "rank", 0) == 0


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


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """``run_dir/config.yaml``, the resolved config (what ``resume=`` reads back), written atomically."""
    if is_rank_zero():
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
