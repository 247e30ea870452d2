"""Detection data: COCO / VOC readers, id mapping, bad annotations, image modes, box-aware augmentation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from mbtasks.data.box_transforms import RandomIoUCrop
from mbtasks.data.coco import CocoDataModule
from mbtasks.data.detection import detection_collate
from mbtasks.data.voc import VocDataModule
from mbtasks.errors import ConfigError, DataError

RESIZE = A.Compose([A.Resize(64, 64)])


def train_pipeline(size: int = 64) -> A.Compose:
    return A.Compose(
        [RandomIoUCrop(), A.Resize(size, size), A.HorizontalFlip()],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3, clip=True),
        seed=0,
    )


def write_image(path: Path, size=(80, 60), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 4), dtype=np.uint8)
    Image.fromarray(arr, "RGBA").convert(mode).save(path)


def write_coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict], split="train") -> Path:
    ann = root / "annotations" / f"{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann


def coco_module(root: Path, val: bool = True, **kw) -> CocoDataModule:
    return CocoDataModule(
        str(root),
        train_ann="annotations/train.json",
        train_images="imgs",
        val_ann="annotations/train.json" if val else None,
        val_images="imgs" if val else None,
        image_size=64,
        batch_size=2,
        num_workers=0,
        train_transforms=train_pipeline(),
        eval_transforms=RESIZE,
        **kw,
    )


CATS = [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]


def test_coco_ids_map_to_contiguous_labels_and_back(tmp_path):
    write_image(tmp_path / "imgs" / "a.png")
    write_image(tmp_path / "imgs" / "b.png")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 90, "bbox": [10, 10, 20, 20]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [30, 5, 10, 40]},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 80, 60], "iscrowd": 1},
    ]
    write_coco(
        tmp_path,
        [
            {"id": 1, "file_name": "a.png", "width": 80, "height": 60},
            {"id": 2, "file_name": "b.png", "width": 80, "height": 60},
        ],
        anns,
        CATS,
    )
    dm = coco_module(tmp_path)
    dm.setup()
    info = dm.info
    # classes sorted by id: 3 car, 7 train, 90 toothbrush
    assert info["class_names"] == ["car", "train", "toothbrush"]
    assert info["category_ids"] == [3, 7, 90]
    by_id = {r.image_id: r for r in dm.datasets["val"].records}
    assert by_id[1].labels.tolist() == [2, 0]
    assert [info["category_ids"][label] for label in by_id[1].labels] == [90, 3]  # and back
    assert by_id[1].boxes.tolist() == [[10, 10, 30, 30], [30, 5, 40, 45]]
    # crowd boxes: kept for evaluation, left out of training targets
    assert by_id[2].iscrowd.tolist() == [True]
    image, target = dm.datasets["val"][1]
    assert image.shape == (3, 64, 64)
    assert target["boxes"].shape == (0, 4) and target["gt_iscrowd"].tolist() == [1]
    image, target = dm.datasets["val"][0]
    assert torch.allclose(target["boxes"][0], torch.tensor([10 * 64 / 80, 10 * 64 / 60, 30 * 64 / 80, 30 * 64 / 60]))
    assert target["orig_size"] == (60, 80)
    images, targets = detection_collate([dm.datasets["train"][0], dm.datasets["train"][1]])
    assert images.shape == (2, 3, 64, 64) and len(targets) == 2


def test_bad_annotations_are_named_counted_and_skipped(tmp_path, caplog):
    write_image(tmp_path / "imgs" / "ok.png")
    write_image(tmp_path / "imgs" / "nosize.png", size=(50, 40))
    images = [
        {"id": 1, "file_name": "ok.png", "width": 80, "height": 60},
        {"id": 2, "file_name": "missing.png", "width": 80, "height": 60},
        {"id": 3, "file_name": "nosize.png", "width": 0, "height": 0},
    ]
    anns = [
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20]},  # good
        {"id": 12, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 20]},  # zero width
        {"id": 13, "image_id": 1, "category_id": 3, "bbox": [10, 10, -5, 20]},  # negative
        {"id": 14, "image_id": 1, "category_id": 3, "bbox": [200, 100, 20, 20]},  # outside
        {"id": 15, "image_id": 1, "category_id": 4, "bbox": [10, 10, 20, 20]},  # unknown category
        {"id": 16, "image_id": 2, "category_id": 3, "bbox": [10, 10, 20, 20]},  # image file missing
        {"id": 17, "image_id": 1, "category_id": 3, "bbox": [70, 50, 20, 20]},  # sticks out: clipped
        {"id": 18, "image_id": 3, "category_id": 7, "bbox": [40, 30, 20, 20]},
    ]  # size from the file: clipped
    write_coco(tmp_path, images, anns, CATS)
    dm = coco_module(tmp_path)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    text = caplog.text
    assert "annotation 12 (ok.png, 80x60)" in text and "zero or negative size" in text
    assert "annotation 14" in text and "outside the image" in text
    assert "annotation 15 (ok.png)" in text and "category id 4" in text
    assert "missing.png not found" in text and "annotation 16" in text
    assert "2 boxes: zero or negative size" in text and "1 boxes: outside the image" in text
    assert "1 unknown category ids" in text
    records = {r.image_id: r for r in dm.datasets["train"].records}
    assert set(records) == {1, 3}
    assert records[1].boxes.tolist() == [[10, 10, 30, 30], [70, 50, 80, 60]]
    assert (records[3].width, records[3].height) == (50, 40)
    assert records[3].boxes.tolist() == [[40, 30, 50, 40]]


def test_no_usable_boxes_stops_with_data_error(tmp_path):
    write_image(tmp_path / "imgs" / "a.png")
    write_coco(
        tmp_path,
        [{"id": 1, "file_name": "a.png", "width": 80, "height": 60}],
        [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 0]},
            {"id": 2, "image_id": 1, "category_id": 99, "bbox": [10, 10, 5, 5]},
        ],
        CATS,
    )
    with pytest.raises(DataError, match=r"train.json: no usable boxes in 1 images .*1 boxes: zero or negative size"):
        coco_module(tmp_path).setup()


def test_malformed_files_and_pipeline_without_bbox_params(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.json").write_text("{not json")
    with pytest.raises(DataError, match="train.json: not valid json"):
        coco_module(tmp_path).setup()
    with pytest.raises(ConfigError, match="bbox_params"):
        CocoDataModule(str(tmp_path), train_transforms=RESIZE)


def test_gray_rgba_palette_images_and_empty_images(tmp_path):
    for name, mode in (("g.png", "L"), ("r.png", "RGBA"), ("p.png", "P")):
        write_image(tmp_path / "imgs" / name, mode=mode)
    images = [
        {"id": i + 1, "file_name": n, "width": 80, "height": 60} for i, n in enumerate(["g.png", "r.png", "p.png"])
    ]
    write_coco(tmp_path, images, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30]}], CATS)
    dm = coco_module(tmp_path, val=False, val_fraction=0.34)
    dm.setup()
    assert len(dm.datasets["train"]) == 2 and len(dm.datasets["val"]) == 1
    for split in ("train", "val"):
        for i in range(len(dm.datasets[split])):
            image, target = dm.datasets[split][i]
            assert image.shape == (3, 64, 64)
            assert target["boxes"].shape[1] == 4
    assert sum(r.boxes.shape[0] == 0 for r in dm.datasets["test"].records + dm.datasets["train"].records) >= 1


def write_voc(folder: Path, stem: str, objects: list[tuple], size=(80, 60), xml_size=None) -> None:
    write_image(folder / f"{stem}.jpg", size=size)
    w, h = xml_size or size
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    (folder / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>"
    )


def test_voc_pairs_layout_difficult_and_zero_size(tmp_path, caplog):
    write_voc(tmp_path / "train", "a", [("banana", (11, 11, 40, 30), 0), ("apple", (1, 1, 20, 20), 1)], xml_size=(0, 0))
    write_voc(tmp_path / "train", "b", [("apple", (5, 5, 50, 50), 0), ("apple", (30, 30, 20, 50), 0)])
    write_voc(tmp_path / "test", "c", [("orange", (5, 5, 50, 50), 0), ("apple", (5, 5, 30, 30), 0)])
    dm = VocDataModule(
        str(tmp_path),
        val_split=None,
        test_split="test",
        val_fraction=0.5,
        image_size=64,
        num_workers=0,
        train_transforms=train_pipeline(),
        eval_transforms=RESIZE,
    )
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.info["class_names"] == ["apple", "banana"]
    assert dm.info["category_ids"] == [1, 2]
    records = {r.path.stem: r for r in dm.datasets["train"].records + dm.datasets["val"].records}
    a = records["a"]
    assert (a.width, a.height) == (80, 60)  # the xml says 0: read from the image
    assert a.boxes.tolist() == [[10, 10, 40, 30], [0, 0, 20, 20]]
    assert a.labels.tolist() == [1, 0] and a.iscrowd.tolist() == [False, True]
    assert records["b"].boxes.shape == (1, 4)  # xmax < xmin skipped
    assert "b.xml object 1 (apple)" in caplog.text
    test = dm.datasets["test"].records[0]
    assert test.labels.tolist() == [0]  # 'orange' is not a training class
    assert "class 'orange'" in caplog.text


def test_voc_devkit_layout(tmp_path):
    write_voc(tmp_path / "JPEGImages", "x1", [("cat", (2, 2, 30, 30), 0)])
    write_voc(tmp_path / "JPEGImages", "x2", [("dog", (2, 2, 30, 30), 0)])
    (tmp_path / "Annotations").mkdir()
    for stem in ("x1", "x2"):
        (tmp_path / "JPEGImages" / f"{stem}.xml").rename(tmp_path / "Annotations" / f"{stem}.xml")
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("x1\nx2\n")
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("x2\n")
    dm = VocDataModule(
        str(tmp_path),
        val_split="val",
        test_split=None,
        image_size=64,
        num_workers=0,
        train_transforms=train_pipeline(),
        eval_transforms=RESIZE,
    )
    dm.setup()
    assert dm.info["class_names"] == ["cat", "dog"]
    assert len(dm.datasets["train"]) == 2 and dm.datasets["test"].records is dm.datasets["val"].records
    with pytest.raises(DataError, match="neither"):
        VocDataModule(str(tmp_path), train_split="nope", train_transforms=train_pipeline()).setup()


def test_iou_crop_keeps_boxes_inside_and_labels_aligned():
    pipeline = train_pipeline(96)
    image = np.zeros((120, 200, 3), np.uint8)
    boxes = np.array([[10, 10, 60, 50], [100, 60, 190, 110], [150, 5, 170, 25]], np.float32)
    seen_crop = False
    for _ in range(30):
        out = pipeline(image=image, bboxes=boxes, labels=np.array([0, 1, 2]))
        assert out["image"].shape == (96, 96, 3)
        got = np.asarray(out["bboxes"]).reshape(-1, 4)
        assert len(got) == len(out["labels"])
        assert (got >= 0).all() and (got <= 96).all()
        assert ((got[:, 2:] - got[:, :2]) > 0).all()
        seen_crop |= len(got) < 3
    assert seen_crop
