"""Classification's :class:`~mbtasks.tasks.spec.TaskSpec`."""

from mbtasks.models.classifier import ClassifierHead
from mbtasks.tasks.classification.check import check_data
from mbtasks.tasks.classification.export import ClassificationExport, ClassificationExportOptions
from mbtasks.tasks.classification.predict import ClassificationPredictOptions, write_predictions
from mbtasks.tasks.classification.predictor import ClassificationPredictor
from mbtasks.tasks.spec import TaskSpec

SPEC = TaskSpec(
    name="classification",
    head=ClassifierHead,
    predictor=ClassificationPredictor,
    predict_options=ClassificationPredictOptions,
    write_predictions=write_predictions,
    export=ClassificationExport(),
    export_options=ClassificationExportOptions,
    check_data=check_data,
)
