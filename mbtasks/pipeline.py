"""Face identification, under the name the README gives it: :mod:`mbtasks.tasks.embedding.identify`
(re-exported unchanged)."""

from mbtasks.tasks.embedding.identify import Pipeline, as_predictor, crop_boxes, pipeline_defaults

__all__ = ["Pipeline", "as_predictor", "crop_boxes", "pipeline_defaults"]
