"""Detection's :class:`~mbtasks.tasks.spec.TaskSpec`."""

from omegaconf import DictConfig

from mbtasks.models.detection.ssd_head import SSDHead
from mbtasks.tasks.detection.check import check_data
from mbtasks.tasks.detection.export import DetectionExport, DetectionExportOptions
from mbtasks.tasks.detection.predict import write_predictions
from mbtasks.tasks.detection.predictor import DetectionPredictor
from mbtasks.tasks.spec import TaskSpec, default_profile_info


def profile_info(cfg: DictConfig, num_classes: int) -> dict:
    info = default_profile_info(cfg, num_classes)
    info["category_ids"] = list(range(1, len(info["class_names"]) + 1))
    return info


# Any input side >= 32 works (stride-2 convs round up): SSD300 is the paper's size.
SPEC = TaskSpec(
    name="detection",
    head=SSDHead,
    predictor=DetectionPredictor,
    write_predictions=write_predictions,
    export=DetectionExport(),
    export_options=DetectionExportOptions,
    check_data=check_data,
    boxes=True,
    profile_info=profile_info,
)
