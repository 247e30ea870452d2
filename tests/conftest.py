"""Shared test helpers: compose the real Hydra config with small overrides and run a mode in-process."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mbtasks import checkpoint
from mbtasks.config import CONFIG_DIR
from mbtasks.modes.run import dispatch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Small, fast settings every CLI-level test starts from.
FAST = [
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "data.num_workers=0",
]


@pytest.fixture(autouse=True)
def no_published_weights(tmp_path_factory, monkeypatch):
    """Every test starts on a machine without published weights: empty torchvision, Hugging Face and
    mbtasks caches (``backbone.pretrained=auto`` trains from scratch), and no downloads."""
    import huggingface_hub.constants as hub

    root = tmp_path_factory.mktemp("weight-caches")
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.setenv("MBTASKS_WEIGHTS_DIR", str(root / "mbtasks"))
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(root / "hf"))
    return root


def is_fraction_of(value: float, n: int) -> bool:
    """``value`` is k / n for a whole k: an accuracy over n images (NaN, a wrong average or a missing image fail)."""
    return math.isfinite(value) and abs(value * n - round(value * n)) < 1e-4


def compose_cfg(overrides: list[str], fast: bool = True) -> DictConfig:
    """The real config tree, composed as ``python -m mbtasks <overrides>`` would."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=(FAST if fast else []) + list(overrides))


def save_checkpoint(task, cfg: DictConfig, path: Path) -> Path:
    """``task`` saved as mode=train saves it (state dict + the mbtasks section), without training."""
    from omegaconf import OmegaConf

    ckpt = {"state_dict": task.state_dict()}
    checkpoint.stamp(
        ckpt,
        task=task.name,
        info=task.info,
        task_args=task.task_args(),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    torch.save(ckpt, path)
    return path


def run_mode(overrides: list[str], run_dir: Path, fast: bool = True) -> dict:
    """Compose and dispatch like the CLI, writing into ``run_dir``."""
    cfg = compose_cfg(overrides, fast)
    return dispatch(cfg, Path(run_dir), overrides)


@pytest.fixture
def tiny_shapes(tmp_path_factory) -> Path:
    """A tiny synthetic shapes ImageFolder (3 classes, 32 px)."""
    from mbtasks.data.synthetic.shapes import make_shapes_classification

    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_classification(
        root,
        classes=["circle", "square", "triangle"],
        train_per_class=8,
        val_per_class=3,
        test_per_class=3,
        image_size=32,
        seed=1,
    )


TINY_CLASSES = ["circle", "square", "triangle"]


def train_tiny(tmp_path_factory, *extra: str) -> tuple[Path, Path, dict]:
    """A 1-epoch classification run (V1 width 0.25) on 32-px shapes, 4 / 2 / 2 images a class:
    ``(data root, run dir, metrics)``. ``extra``: more overrides (bf16, NHWC...)."""
    from mbtasks.data.synthetic.shapes import make_shapes_classification

    root = make_shapes_classification(
        tmp_path_factory.mktemp("shapes"),
        classes=TINY_CLASSES,
        train_per_class=4,
        val_per_class=2,
        test_per_class=2,
        image_size=32,
        seed=1,
    )
    run_dir = tmp_path_factory.mktemp("cls")
    metrics = run_mode(
        [
            f"data.root={root}",
            "data.generator=null",
            "data.image_size=32",
            "data.batch_size=6",
            "backbone.width=0.25",
            "trainer.max_epochs=1",
            "task.log_images=0",
            *extra,
        ],
        run_dir,
    )
    return root, run_dir, metrics


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny classification run shared by the export, transfer and fast-path tests (read-only:
    copy what a test changes). ``(data root, run dir)``."""
    root, run_dir, _ = train_tiny(tmp_path_factory)
    return root, run_dir
