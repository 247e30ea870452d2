"""mode=convert: write the configured detection data, any format, as COCO json into the run dir.

``python -m mbtasks task=detection data=voc data.root=DIR mode=convert`` writes ``coco/train.json``,
``coco/val.json`` and ``coco/test.json`` (not when the test split is the val split) and ``convert.json``
(per split: the json, the image folder its ``file_name`` entries are relative to, counts). Each json
reads back with ``data=coco data.root=/ data.train_ann=<json> data.train_images=<image folder>``. The
writer is :func:`mbtasks.data.coco_export.write_coco`; YOLO files: :func:`mbtasks.data.yolo.write_yolo`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from mbtasks.atomic_files import write_json_atomic
from mbtasks.data.coco_export import write_coco
from mbtasks.data.detection import DetectionDataModule
from mbtasks.errors import ConfigError
from mbtasks.modes.rundir import write_config
from mbtasks.tasks import spec_for_config

log = logging.getLogger(__name__)

REPORT = "convert.json"


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    spec = spec_for_config(cfg)
    if not spec.boxes:
        raise ConfigError(
            f"mode=convert writes detection data as COCO json; task={spec.name} has no boxes "
            "(use task=detection with its data=...)"
        )
    datamodule = instantiate(cfg.data)
    if not isinstance(datamodule, DetectionDataModule):
        raise ConfigError(f"mode=convert: data._target_={cfg.data.get('_target_')} is not a detection data module")
    write_config(run_dir, cfg)
    datamodule.setup("fit")
    report = {}
    for split in datamodule.datasets:
        if split == "test" and datamodule.test_split == "val":
            continue
        done = write_coco(datamodule, split, run_dir / "coco" / f"{split}.json")
        report[split] = {
            "json": str(done.path),
            "image_root": str(done.image_root),
            "images": done.images,
            "annotations": done.annotations,
        }
        print(
            f"{split}: {done.path} ({done.images} images, {done.annotations} boxes; file names relative to "
            f"{done.image_root})"
        )
    write_json_atomic(run_dir / REPORT, report)
    log.info("convert report: %s", run_dir / REPORT)
    return report
