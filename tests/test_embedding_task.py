"""Embedding head, task construction, losses and distillation toward a fixed teacher."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException

from mbtasks.backbones.mobilenet_v1 import MobileNetV1
from mbtasks.errors import ConfigError
from mbtasks.models.embedding import EmbeddingHead, EmbeddingNet
from mbtasks.tasks import build_task, load_task
from mbtasks.tasks.embedding.distill import Distiller, load_teacher
from mbtasks.tasks.embedding.losses import active_fraction
from tests.conftest import compose_cfg, save_checkpoint

INFO = {"image_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_train_identities": 6}


def _cfg(*overrides: str):
    return compose_cfg(["task=embedding", "backbone.width=0.25", "data.image_size=32", *overrides])


def _batch(p: int = 4, k: int = 2, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(p * k, 3, size, size, generator=g), torch.arange(p).repeat_interleave(k)


@pytest.mark.parametrize("width", [0.25, 0.5])
def test_head_sizes_itself_from_the_backbone_and_outputs_unit_vectors(width):
    backbone = MobileNetV1(width)
    net = EmbeddingNet(backbone, EmbeddingHead(backbone.num_features, dim=64))
    x = torch.randn(3, 3, 64, 64)
    emb = net(x)  # train mode: batch statistics (fresh running statistics shrink eval outputs to ~0)
    assert emb.shape == (3, 64)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    net.eval()
    flipped = net.embed(x, flip=True)
    assert torch.allclose(flipped.norm(dim=1), torch.ones(3), atol=1e-5)
    # flip TTA is symmetric: an image and its mirror get one embedding
    assert torch.allclose(net.embed(x.flip(-1), flip=True), flipped, atol=1e-5)


@pytest.mark.parametrize("overrides", [[], ["task.miner=batch_hard"], ["task.miner=all"], ["task.loss=arcface"]])
def test_losses_train_a_step(overrides):
    task = build_task(_cfg(*overrides), INFO)
    task.log = lambda *a, **k: None  # no trainer attached
    loss = task.training_step(_batch(), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert task.model.head.fc.weight.grad is not None
    if "task.loss=arcface" in overrides:  # the class centres are trained too
        assert task.metric_loss.W.grad is not None


def test_active_triplet_fraction():
    task = build_task(_cfg(), INFO)
    labels = torch.tensor([0, 0, 1, 1])
    # well separated: no triplet violates the margin
    good = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.01], [0, 1], [0.01, 1]]), dim=1)
    assert active_fraction(task.metric_loss, good, labels, task.margin) == 0.0
    # each identity's two images are far apart, and each has a twin of the other identity
    bad = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    assert active_fraction(task.metric_loss, bad, labels, task.margin) == 1.0


def test_bad_task_options_are_config_errors():
    # Hydra wraps errors raised while instantiating; the CLI prints the message either way
    errors = (ConfigError, InstantiationException)
    with pytest.raises(errors, match="task.loss='tripplet'.*Did you mean 'triplet'"):
        build_task(_cfg("task.loss=tripplet"), INFO)
    with pytest.raises(errors, match="task.miner"):
        build_task(_cfg("task.miner=hardest"), INFO)
    with pytest.raises(errors, match="needs task.teacher"):
        build_task(_cfg("task.loss=none"), INFO)
    with pytest.raises(errors, match="task.teacher='no_such_model_xyz'"):
        build_task(_cfg("task.teacher=no_such_model_xyz"), INFO)


def _save_teacher(tmp_path, dim: int):
    """An embedding checkpoint (as mode=train writes it) of a random 32-px network."""
    cfg = _cfg(f"head.dim={dim}")
    return save_checkpoint(build_task(cfg, INFO), cfg, tmp_path / "teacher.ckpt")


def test_distillation_loss_decreases_toward_a_fixed_teacher(tmp_path):
    torch.manual_seed(0)
    path = _save_teacher(tmp_path, dim=48)
    student = build_task(_cfg("head.dim=32", "task.loss=none", f"task.teacher={path}"), INFO)
    assert student.task_args() == {"teacher_dim": 48} and "teacher_dim" not in student.info
    assert isinstance(student.distill.projection, torch.nn.Linear)  # sizes differ: a projection bridges them
    teacher = student.distill.teacher
    frozen = [p.clone() for p in teacher.parameters()]
    student.log = lambda *a, **k: None
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    batch = _batch(4, 4, seed=1)
    losses = []
    for _ in range(30):
        loss = student.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(a, b) for a, b in zip(frozen, teacher.parameters(), strict=True))
    # the teacher is neither trained, saved nor counted
    assert not any("teacher" in k for k in student.state_dict())
    assert all(id(p) not in {id(q) for q in teacher.parameters()} for p in student.parameters())


def test_distilled_checkpoint_rebuilds_without_its_teacher(tmp_path):
    path = _save_teacher(tmp_path, dim=48)
    cfg = _cfg("head.dim=32", f"task.teacher={path}")
    student = build_task(cfg, INFO)
    ckpt = save_checkpoint(student, cfg, tmp_path / "student.ckpt")
    path.unlink()  # the teacher is gone; the student still loads (its size is in the checkpoint's task_args)
    task, _ = load_task(ckpt)
    assert task.distill.ref.teacher is None and task.distill.teacher_dim == 48
    torch.testing.assert_close(task.distill.projection.weight, student.distill.projection.weight)


def test_timm_teacher_and_input_adaptation():
    teacher = load_teacher("mobilenetv3_small_050", INFO["mean"], INFO["std"], pretrained=False)
    out = teacher(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, teacher.dim)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    teacher.train()
    assert not teacher.training  # stays frozen


def test_distillation_loss_values():
    same = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    images = torch.zeros(4, 3, 32, 32)

    class Fixed(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, images):
            return self.out

    for target, expected in ((same, 0.0), (-same, 4.0)):
        distiller = Distiller("fixed", 8, 8, INFO["mean"], INFO["std"])
        distiller.ref.teacher = Fixed(target)
        assert distiller(same, images).item() == pytest.approx(expected, abs=1e-5)


def test_threshold_and_profile_network():
    cfg = _cfg()
    task = build_task(cfg, INFO)
    assert float(task.threshold) == 1.0 and "threshold" in task.state_dict()
    from mbtasks.modes.profile import profile_network

    net = profile_network(cfg).eval()
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 128)
