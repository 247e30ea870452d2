"""The margin-softmax losses of the embedding task (ArcFace, CosFace, SphereFace from
pytorch-metric-learning): each trains, its settings reach it, bad values are refused by name."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.errors import InstantiationException
from pytorch_metric_learning import losses

from mbtasks.errors import ConfigError
from mbtasks.tasks import build_task
from tests.conftest import compose_cfg

INFO = {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "num_train_identities": 4}
# Hydra wraps errors raised while instantiating; the CLI prints the message either way
ERRORS = (ConfigError, InstantiationException)


def _task(*overrides: str):
    task = build_task(compose_cfg(["task=embedding", "backbone.width=0.25", "data.image_size=32", *overrides]), INFO)
    task.log = lambda *a, **k: None  # no trainer attached
    return task


def separable_batch(k: int = 4, seed: int = 0):
    """Four identities, each a flat colour of its own plus noise: a batch a network separates at once."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])
    labels = torch.arange(4).repeat_interleave(k)
    images = colours[labels][:, :, None, None].expand(-1, 3, 32, 32) + 0.3 * torch.randn(4 * k, 3, 32, 32, generator=g)
    return images, labels


@pytest.mark.parametrize(
    ("loss", "cls"),
    [("arcface", losses.ArcFaceLoss), ("cosface", losses.CosFaceLoss), ("sphereface", losses.SphereFaceLoss)],
)
def test_margin_loss_trains_and_decreases(loss, cls):
    torch.manual_seed(0)
    task = _task(f"task.loss={loss}")
    assert type(task.metric_loss) is cls and task.miner is None
    opt = torch.optim.Adam(task.parameters(), lr=1e-3)
    batch = separable_batch()
    values = []
    for _ in range(3):  # two updates, and the loss after them
        loss_value = task.training_step(batch, 0)
        values.append(float(loss_value.detach()))
        opt.zero_grad()
        loss_value.backward()
        assert task.metric_loss.W.grad is not None  # the class centres train too
        opt.step()
    assert all(math.isfinite(v) for v in values)
    assert values[2] < values[1] < values[0]


def test_settings_reach_the_losses_and_default_to_the_papers():
    arc, cos, sphere = (_task(f"task.loss={name}").metric_loss for name in ("arcface", "cosface", "sphereface"))
    assert arc.margin == pytest.approx(math.radians(28.6)) and arc.scale == 64
    assert cos.margin == pytest.approx(0.35) and cos.scale == 64
    assert sphere.margin == 4 and sphere.scale == 64
    cos = _task("task.loss=cosface", "task.cosface_margin=0.2", "task.cosface_scale=30").metric_loss
    assert cos.margin == pytest.approx(0.2) and cos.scale == 30
    sphere = _task("task.loss=sphereface", "task.sphereface_margin=2", "task.sphereface_scale=16").metric_loss
    assert sphere.margin == 2 and sphere.scale == 16
    # the other losses' keys are not checked when unused
    assert _task("task.loss=triplet", "task.cosface_margin=5").metric_loss is not None


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["task.loss=cosfase"], "task.loss='cosfase'.*Did you mean 'cosface'"),
        (["task.loss=sphere_face"], "task.loss='sphere_face'.*Did you mean 'sphereface'"),
        (["task.loss=cosface", "task.cosface_margin=1.5"], "task.cosface_margin=1.5: .*0 <= m <= 1"),
        (["task.loss=cosface", "task.cosface_margin=-0.1"], "task.cosface_margin=-0.1"),
        (["task.loss=cosface", "task.cosface_scale=0"], "task.cosface_scale=0: expected a number > 0"),
        (["task.loss=sphereface", "task.sphereface_margin=2.5"], "task.sphereface_margin=2.5: .*whole number >= 1"),
        (["task.loss=sphereface", "task.sphereface_margin=0"], "task.sphereface_margin=0"),
        (["task.loss=sphereface", "task.sphereface_scale=-64"], "task.sphereface_scale=-64"),
        (["task.loss=sphereface", "task.sphereface_scale=abc"], "task.sphereface_scale='abc'"),
        (["task.loss=arcface", "task.arcface_margin=120"], "task.arcface_margin=120: .*degrees.*0 <= m < 90"),
        (["task.loss=arcface", "task.arcface_scale=nan"], "task.arcface_scale=nan"),
    ],
)
def test_bad_choices_and_values_are_refused_by_name(overrides, match):
    with pytest.raises(ERRORS, match=match):
        _task(*overrides)


def test_margin_losses_need_training_identities():
    with pytest.raises(ERRORS, match="task.loss=sphereface needs the number of training identities"):
        build_task(
            compose_cfg(["task=embedding", "backbone.width=0.25", "data.image_size=32", "task.loss=sphereface"]),
            {**INFO, "num_train_identities": 0},
        )


def test_cli_trains_a_margin_loss_with_its_settings(tmp_path):
    """task.loss=sphereface through the real CLI, 2 steps; then arcface at its defaults. The task clips
    the margin losses' gradient norm at 5 by itself (at its SGD rate of 0.2, a scale-64 margin loss
    otherwise overflows to NaN within two steps)."""
    from mbtasks.data.synthetic.faces import make_synthetic_faces
    from mbtasks.tasks import load_task
    from tests.conftest import run_mode

    gen = {"num_identities": 12, "images_per_identity": 4, "image_size": 32, "seed": 0}
    make_synthetic_faces(tmp_path / "data" / "synthetic_faces", **gen)
    overrides = [
        "task=embedding",
        "backbone.width=0.25",
        f"data_dir={tmp_path / 'data'}",
        "data.image_size=32",
        *(f"data.generator.{k}={v}" for k, v in gen.items()),
        "data.val_identities=3",
        "data.test_identities=3",
        "data.identities_per_batch=3",
        "data.images_per_identity=2",
        "data.num_folds=2",
        "data.pairs_per_fold=6",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "task.projector_identities=0",
        "task.loss=sphereface",
        "task.sphereface_margin=3",
        "task.sphereface_scale=32",
    ]
    metrics = run_mode(overrides, tmp_path / "train")
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["test/verification_acc"] <= 1.0
    task, _ = load_task(tmp_path / "train" / "checkpoints" / "best.ckpt")
    assert type(task.metric_loss) is losses.SphereFaceLoss
    assert task.metric_loss.margin == 3 and task.metric_loss.scale == 32
    base = [o for o in overrides if not o.startswith("task.sphereface") and o != "task.loss=sphereface"]
    metrics = run_mode([*base, "task.loss=arcface"], tmp_path / "arcface")
    assert math.isfinite(metrics["train/loss"])


@pytest.mark.parametrize(
    "loss, clip",
    [("arcface", (5.0, "norm")), ("cosface", (5.0, "norm")), ("sphereface", (5.0, "norm")), ("triplet", (None, None))],
)
def test_margin_losses_clip_the_gradient_norm_unless_the_trainer_does(loss, clip):
    task = _task(f"task.loss={loss}")
    seen = []
    task.clip_gradients = lambda optimizer, value, algorithm: seen.append((value, algorithm))
    task.configure_gradient_clipping(None)
    task.configure_gradient_clipping(None, 1.0, "value")  # trainer.gradient_clip_val given: it wins
    assert seen == [clip, (1.0, "value")]
