"""The COCO json writer (mbtasks.data.coco_export, mode=convert): every detection format written as COCO
and read back by our COCO reader gives the same boxes, labels and ignore regions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mbtasks.data.coco import CocoDataModule
from mbtasks.data.coco_export import records_to_coco, write_coco
from mbtasks.data.dlib_xml import DlibXmlDataModule
from mbtasks.data.voc import VocDataModule
from mbtasks.data.wider_face import WiderFaceDataModule
from mbtasks.data.yolo import YoloDataModule
from mbtasks.errors import DataError
from mbtasks.metrics.coco import evaluate_coco
from tests.conftest import run_mode
from tests.test_face_formats import imglab, wider
from tests.test_yolo_data import quirky_set, same_boxes, voc_pairs


def data_module(kind: str, root: Path):
    if kind == "voc":
        return VocDataModule(str(voc_pairs(root)), val_split=None, val_fraction=0.34)
    if kind == "yolo":
        return YoloDataModule(str(quirky_set(root)))
    if kind == "dlib_xml":
        return DlibXmlDataModule(str(imglab(root)), val_xml="training.xml")
    return WiderFaceDataModule(str(wider(root)))


def read_back(path: Path, image_root: Path, category_ids: list[int]) -> list:
    from mbtasks.data.coco import load_coco

    records, report = load_coco(path, image_root, category_ids)
    assert not report.counts, report.summary()
    return records


@pytest.mark.parametrize("kind", ["voc", "yolo", "dlib_xml", "wider_face"])
def test_every_format_round_trips_through_coco_json(tmp_path, kind):
    dm = data_module(kind, tmp_path / "data")
    for split in ("train", "val", "test"):
        done = write_coco(dm, split, tmp_path / "out" / f"{split}.json")
        data = json.loads(done.path.read_text())
        assert done.images == len(data["images"]) == len(dm.datasets[split].records)
        assert [c["id"] for c in data["categories"]] == dm.category_ids
        assert [c["name"] for c in data["categories"]] == dm.class_names
        crowd = [a for a in data["annotations"] if a["iscrowd"]]
        assert all(a["ignore"] == 1 for a in crowd)
        back = read_back(done.path, done.image_root, dm.category_ids)
        same_boxes(dm.datasets[split].records, back, keep_ignored=True)
    if kind == "wider_face":  # per-box flags travel as CVAT-style attributes
        ann = json.loads((tmp_path / "out" / "train.json").read_text())["annotations"]
        assert [a["attributes"]["blur"] for a in ann[:3]] == [0, 2, 1]


def test_written_json_is_a_coco_file_pycocotools_scores(tmp_path):
    dm = data_module("dlib_xml", tmp_path / "data")
    done = write_coco(dm, "train", tmp_path / "train.json")
    gt = json.loads(done.path.read_text())
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    stats, _ = evaluate_coco(gt, perfect)
    assert stats["map"] == pytest.approx(1.0)
    # a detection on the ignore region is neither a hit nor a false alarm
    ignore = next(a for a in gt["annotations"] if a["iscrowd"])
    stats, _ = evaluate_coco(
        gt, perfect + [{**{k: ignore[k] for k in ("image_id", "category_id", "bbox")}, "score": 1.0}]
    )
    assert stats["map"] == pytest.approx(1.0)


def test_image_root_and_repeated_ids(tmp_path):
    dm = data_module("voc", tmp_path / "data")
    dm.setup("fit")
    records = dm.datasets["train"].records + dm.datasets["test"].records  # ids repeat across splits
    data = records_to_coco(records, dm.class_names, dm.category_ids, tmp_path / "data")
    assert sorted(i["id"] for i in data["images"]) == list(range(len(records)))
    assert {i["file_name"].split("/")[0] for i in data["images"]} == {"train", "test"}
    with pytest.raises(DataError, match="is not inside image_root"):
        records_to_coco(records, dm.class_names, dm.category_ids, tmp_path / "data" / "train")
    with pytest.raises(DataError, match="split 'nope'"):
        write_coco(dm, "nope", tmp_path / "x.json")


def test_mode_convert_writes_coco_that_data_coco_reads(tmp_path):
    root = voc_pairs(tmp_path / "voc")
    report = run_mode(
        ["task=detection", "mode=convert", "data=voc", f"data.root={root}", "data.image_size=64"], tmp_path / "run"
    )
    assert sorted(report) == ["test", "train", "val"]
    assert json.loads((tmp_path / "run" / "convert.json").read_text()) == report
    coco = CocoDataModule(
        "/",
        report["train"]["json"],
        report["train"]["image_root"],
        report["val"]["json"],
        report["val"]["image_root"],
        report["test"]["json"],
        report["test"]["image_root"],
    )
    coco.setup("fit")
    voc = VocDataModule(str(root), val_split=None)
    voc.setup("fit")
    assert coco.class_names == voc.class_names
    for split in ("train", "val", "test"):
        same_boxes(voc.datasets[split].records, coco.datasets[split].records, keep_ignored=True)
    assert np.array([r.iscrowd.sum() for r in coco.datasets["test"].records]).sum() == 1


def test_mode_convert_refuses_tasks_without_boxes(tmp_path, tiny_shapes):
    from mbtasks.errors import ConfigError

    with pytest.raises(ConfigError, match="task=classification has no boxes"):
        run_mode(
            ["mode=convert", f"data.root={tiny_shapes}", "data.generator=null", "data.image_size=32"], tmp_path / "run"
        )
