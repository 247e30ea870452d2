"""Embedding distillation, as the MobileNet paper trained its face model (Howard et al. 2017,
arXiv:1704.04861, Sec. 4.7: "minimize the squared differences of the outputs of FaceNet
and MobileNet"; Hinton et al. 2015 for distillation in general).

A frozen teacher (an mbtasks embedding checkpoint, or any timm model's pooled features)
embeds the student's batch; the student's embedding, projected to the teacher's size
when the two differ, is pulled toward it with a squared L2 loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mbtasks.errors import ConfigError, suggest
from mbtasks.tasks.loading import load_task

log = logging.getLogger(__name__)


class Teacher(nn.Module):
    """A frozen network that embeds images normalised the student's way.

    Args:
        net: maps ``(N, 3, H, W)`` images, normalised with ``mean``/``std``, to ``(N, dim)``.
        dim: the teacher's embedding size.
        mean / std: the teacher's input normalisation.
        image_size: the teacher's input side, or None to take the student's.
        student_mean / student_std: how the images it receives are normalised.
        name: what it was loaded from (for logs).

    Shapes:
        ``(N, 3, H, W) -> (N, dim)`` unit-length embeddings.
    """

    def __init__(
        self, net: nn.Module, dim: int, mean, std, image_size: int | None, student_mean, student_std, name: str = ""
    ) -> None:
        super().__init__()
        self.net = net
        self.dim = int(dim)
        self.image_size = image_size
        self.name = name
        scale = torch.tensor(student_std, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)
        shift = (
            torch.tensor(student_mean, dtype=torch.float32) - torch.tensor(mean, dtype=torch.float32)
        ) / torch.tensor(std, dtype=torch.float32)
        # x_teacher = x_student * scale + shift  (per channel)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # always in eval mode: frozen batch-norm statistics

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images * self.scale + self.shift
        if self.image_size and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return F.normalize(self.net(x).flatten(1).float(), dim=1)


def load_teacher(spec: str, student_mean, student_std, pretrained: bool = False) -> Teacher:
    """A :class:`Teacher` from an mbtasks embedding checkpoint path or a timm model name.

    Args:
        spec: ``path/to/best.ckpt`` (an embedding task's checkpoint) or a timm model name
            (its pooled features, ``num_classes=0``, are the embedding).
        student_mean / student_std: the student's input normalisation.
        pretrained: for a timm name, ask timm for published weights (needs internet or
            a filled cache); without them the teacher is random (only useful in tests).

    Raises:
        ConfigError: neither an existing checkpoint nor a timm model, or a checkpoint of another task.
    """
    path = Path(spec)
    if path.is_file():
        task, _ = load_task(path)
        if task.name != "embedding":
            raise ConfigError(
                f"task.teacher={spec}: a {task.name!r} checkpoint; a teacher must be an embedding checkpoint"
            )
        info = task.info
        return Teacher(
            task.model,
            task.model.dim,
            info["mean"],
            info["std"],
            int(info["image_size"]),
            student_mean,
            student_std,
            name=str(path),
        )
    import timm

    models = timm.list_models()
    if spec not in models:
        what = (
            "checkpoint file not found"
            if path.suffix == ".ckpt" or "/" in spec
            else "not a file, nor a timm model name"
        )
        raise ConfigError(f"task.teacher={spec!r}: {what}.{suggest(spec, models)}")
    if not pretrained:
        log.warning("task.teacher=%s with task.teacher_pretrained=false: the teacher has random weights", spec)
    net = timm.create_model(spec, pretrained=pretrained, num_classes=0).eval()
    with torch.no_grad():  # the pooled size (some models add a head conv after num_features)
        dim = net(torch.zeros(1, 3, 64, 64)).flatten(1).shape[1]
    cfg = net.pretrained_cfg
    return Teacher(
        net,
        dim,
        cfg.get("mean", (0.485, 0.456, 0.406)),
        cfg.get("std", (0.229, 0.224, 0.225)),
        None,
        student_mean,
        student_std,
        name=spec,
    )


@dataclass
class TeacherRef:
    """The teacher, held by reference: not a submodule of the student (not trained, saved or counted)."""

    teacher: Teacher | None = None


class Distiller(nn.Module):
    """Squared L2 distance between the (projected) student embedding and its teacher's, batch mean.

    The teacher is loaded on first use (:func:`load_teacher`), so a task rebuilt from a checkpoint
    for inference never loads it.

    Args:
        spec: the teacher: an embedding checkpoint path or a timm model name.
        student_dim: the student's embedding size.
        teacher_dim: the teacher's; ``None`` loads the teacher now to read it (a fresh run). A
            learned linear projection maps the student's embedding to it when the sizes differ.
        mean / std: the student's input normalisation.
        pretrained: a timm teacher with published weights.

    Shapes:
        ``student (N, student_dim)``, ``images (N, 3, H, W)`` -> scalar in [0, 4].
    """

    def __init__(
        self, spec: str, student_dim: int, teacher_dim: int | None, mean, std, pretrained: bool = False
    ) -> None:
        super().__init__()
        self.spec, self.mean, self.std, self.pretrained = spec, tuple(mean), tuple(std), bool(pretrained)
        self.ref = TeacherRef()
        if teacher_dim is None:
            teacher_dim = self.teacher.dim
        self.teacher_dim = int(teacher_dim)
        self.projection = (
            nn.Identity() if student_dim == self.teacher_dim else nn.Linear(student_dim, self.teacher_dim, bias=False)
        )

    @property
    def teacher(self) -> Teacher:
        if self.ref.teacher is None:
            self.ref.teacher = load_teacher(self.spec, self.mean, self.std, self.pretrained)
            log.info("distilling from %s (%d-d embeddings)", self.ref.teacher.name, self.ref.teacher.dim)
        return self.ref.teacher

    def forward(self, student: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        target = self.teacher.to(images.device)(images)
        projected = F.normalize(self.projection(student), dim=1)
        return (projected - target.to(projected.dtype)).pow(2).sum(1).mean()
