"""Embedding's :class:`~mbtasks.tasks.spec.TaskSpec`."""

from omegaconf import DictConfig

from mbtasks.models.embedding import EmbeddingHead
from mbtasks.tasks.embedding.check import check_data
from mbtasks.tasks.embedding.export import EmbeddingExport, EmbeddingExportOptions
from mbtasks.tasks.embedding.predict import write_predictions
from mbtasks.tasks.embedding.predict_options import EmbeddingPredictOptions
from mbtasks.tasks.embedding.predictor import EmbeddingPredictor
from mbtasks.tasks.spec import TaskSpec


def profile_info(cfg: DictConfig, num_classes: int) -> dict:
    """Data info for counting the network (``num_classes`` identities for ArcFace)."""
    return {
        "image_size": int(cfg.data.image_size),
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "num_train_identities": int(num_classes),
    }


SPEC = TaskSpec(
    name="embedding",
    head=EmbeddingHead,
    predictor=EmbeddingPredictor,
    predict_options=EmbeddingPredictOptions,
    write_predictions=write_predictions,
    export=EmbeddingExport(),
    export_options=EmbeddingExportOptions,
    check_data=check_data,
    profile_info=profile_info,
)
