"""Object detection (SSD / SSDLite, MobileNet V1 Sec. 4.6 / V2 Sec. 6.2): the task, its predictor,
export and data check."""

from mbtasks.tasks.detection.spec import SPEC
from mbtasks.tasks.detection.task import DetectionTask

__all__ = ["SPEC", "DetectionTask"]
