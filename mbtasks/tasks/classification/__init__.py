"""Image classification (MobileNet V1 Sec. 4.2): the task, its predictor, export and data check."""

from mbtasks.tasks.classification.spec import SPEC
from mbtasks.tasks.classification.task import ClassificationTask

__all__ = ["SPEC", "ClassificationTask"]
