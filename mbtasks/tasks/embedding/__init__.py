"""FaceNet-style embeddings: the task, its losses, distillation, predictor, export and data check."""

from mbtasks.tasks.embedding.spec import SPEC
from mbtasks.tasks.embedding.task import EmbeddingTask

__all__ = ["SPEC", "EmbeddingTask"]
