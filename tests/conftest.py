"""Shared test helpers: compose the real Hydra config with small overrides and run a mode in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mbtasks.__main__ import CONFIG_DIR, dispatch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Small, fast settings every CLI-level test starts from.
FAST = [
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "data.num_workers=0",
]


def compose_cfg(overrides: list[str], fast: bool = True) -> DictConfig:
    """The real config tree, composed as ``python -m mbtasks <overrides>`` would."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=(FAST if fast else []) + list(overrides))


def run_mode(overrides: list[str], run_dir: Path, fast: bool = True) -> dict:
    """Compose and dispatch like the CLI, writing into ``run_dir``."""
    cfg = compose_cfg(overrides, fast)
    return dispatch(cfg, Path(run_dir), overrides)


@pytest.fixture
def tiny_shapes(tmp_path_factory) -> Path:
    """A tiny synthetic shapes ImageFolder (3 classes, 32 px)."""
    from mbtasks.data.synthetic import make_shapes_classification

    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_classification(root, classes=["circle", "square", "triangle"], train_per_class=8,
                                      val_per_class=3, test_per_class=3, image_size=32, seed=1)
