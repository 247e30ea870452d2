"""data=yolo: ultralytics data.yaml rules, label-file quirks counted, mode=check, a 2-step CLI run, and
VOC -> YOLO files -> the same boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mbtasks.data.coco import CocoDataModule
from mbtasks.data.voc import VocDataModule
from mbtasks.data.yolo import YoloDataModule, label_path, read_data_yaml, write_yolo
from mbtasks.errors import DataError
from tests.conftest import run_mode

W, H = 80, 60


def image(path: Path, size: tuple[int, int] = (W, H), color=(90, 120, 150)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def yolo_set(root: Path, labels: dict[str, dict[str, str | None]], names="[cat, dog]", extra: str = "") -> Path:
    """``root/images/<split>/<name>.png`` with ``root/labels/<split>/<name>.txt`` (None: no label file) and
    ``root/data.yaml`` (train / val from the splits given)."""
    for split, files in labels.items():
        for name, text in files.items():
            image(root / "images" / split / f"{name}.png")
            if text is not None:
                (root / "labels" / split).mkdir(parents=True, exist_ok=True)
                (root / "labels" / split / f"{name}.txt").write_text(text)
    lines = [f"{split}: images/{split}" for split in labels] + [f"names: {names}", extra]
    (root / "data.yaml").write_text("\n".join(lines) + "\n")
    return root / "data.yaml"


# class 0 box in the middle: x1y1x2y2 = (20, 15, 60, 45) in an 80x60 image
MIDDLE = "0 0.5 0.5 0.5 0.5"


def test_label_path_replaces_the_last_images_folder():
    assert label_path("/d/images/x/images/train/a.b.jpg") == Path("/d/images/x/labels/train/a.b.txt")
    assert label_path("/d/train/a.png") == Path("/d/train/a.txt")  # no /images/: next to the image


def test_yaml_paths_names_and_listings(tmp_path):
    root = tmp_path / "set"
    for name in ("a", "b", "c"):
        image(root / "images" / "train" / f"{name}.png")
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / f"{name}.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    (root / "train.txt").write_text("./images/train/a.png\nimages/train/b.png\n\n")
    (tmp_path / "cfg").mkdir()
    # path relative to the yaml, a listing txt (./ and root-relative lines), a list entry; dict names with gaps
    (tmp_path / "cfg" / "data.yaml").write_text(
        "path: ../set\ntrain: train.txt\nval: [images/train]\nnames: {0: cat, 2: dog}\n"
    )
    spec = read_data_yaml(tmp_path / "cfg" / "data.yaml")
    assert spec.root == root.resolve() and spec.names == ["cat", "dog"] and spec.class_ids == [0, 2]
    assert spec.splits["train"] == [(root / "train.txt").resolve()] and spec.splits["test"] is None
    dm = YoloDataModule(str(tmp_path / "cfg"))
    dm.setup("fit")
    assert [r.path.name for r in dm.datasets["train"].records] == ["a.png", "b.png"]
    assert [r.path.name for r in dm.datasets["val"].records] == ["a.png", "b.png", "c.png"]
    assert dm.test_split == "val" and dm.info["category_ids"] == [0, 2]

    rf = tmp_path / "roboflow"
    (rf / "train" / "labels").mkdir(parents=True)
    for name in ("x", "y"):
        image(rf / "train" / "images" / f"{name}.png")
        (rf / "train" / "labels" / f"{name}.txt").write_text(MIDDLE + "\n")
    (rf / "data.yaml").write_text("train: ../train/images\nnc: 1\nnames: ['thing']\n")
    spec = read_data_yaml(rf / "data.yaml")
    assert spec.splits["train"] == [(rf / "train" / "images").resolve()] and spec.splits["val"] is None
    dm = YoloDataModule(str(rf / "data.yaml"), val_fraction=0.5)
    dm.setup("fit")  # no val: one of the two images is held out; no test: test on val
    assert len(dm.datasets["train"]) == len(dm.datasets["val"]) == 1 and dm.test_split == "val"
    assert dm.class_names == ["thing"] and dm.datasets["val"].records[0].labels.tolist() == [0]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("val: images/train\nnames: [a]\n", "'train' is not set"),
        ("train: images/train\nnames: [a, b]\nnc: 3\n", "'nc: 3' but 'names' has 2"),
        ("train: images/train\nnames: [a, a]\n", "'a' is given twice"),
        ("train: images/train\n", "needs 'names'"),
        ("train: images/train\nnames: {x: a}\n", "names key 'x'"),
        ("path: nowhere\ntrain: images/train\nnames: [a]\n", "path: nowhere is not a folder"),
    ],
)
def test_yaml_mistakes_name_the_key(tmp_path, text, match):
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(DataError, match=match):
        read_data_yaml(tmp_path / "data.yaml")


def test_missing_split_folder_and_root_are_named(tmp_path):
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: [a]\n")
    with pytest.raises(DataError, match="images/train: split entry not found"):
        YoloDataModule(str(tmp_path)).setup("fit")
    with pytest.raises(DataError, match="not found"):
        YoloDataModule(str(tmp_path / "nope")).setup("fit")


QUIRKS = "\n".join(
    [
        MIDDLE,
        MIDDLE,  # duplicate: dropped once
        "1 0.9 0.5 0.4 0.2",  # x2 = 1.1: clipped to (56, 24, 80, 36)
        "1 1.5 0.5 0.2 0.2",  # wholly right of the image: dropped
        "0 0.1 0.1 0.3 0.1 0.3 0.3",  # a triangle: its bounding box (8, 6, 24, 18)
        "7 0.5 0.5 0.1 0.1",  # class 7 is not in names: dropped
        "0 0.5 0.5",  # too few values
        "0 0.5 0.5 0.2 0.2 0.9",  # a score column: not a label line
        "x 0.5 0.5 0.2 0.2",  # not a number
        "1 0.5 0.5 0 0.2",  # zero width
        "",
    ]
)


def quirky_set(root: Path) -> Path:
    # "plain": a Windows editor's file (BOM, CRLF)
    return yolo_set(
        root,
        {
            "train": {"quirks": QUIRKS, "empty": "", "nolabel": None, "plain": "\ufeff" + MIDDLE + "\r\n"},
            "val": {"v": MIDDLE},
        },
    )


def test_label_quirks_are_fixed_or_dropped_and_counted(tmp_path):
    dm = YoloDataModule(str(quirky_set(tmp_path)))
    dm.setup("fit")
    records = {r.path.stem: r for r in dm.datasets["train"].records}
    quirks = records["quirks"]
    np.testing.assert_allclose(quirks.boxes, [[20, 15, 60, 45], [56, 24, 80, 36], [8, 6, 24, 18]], atol=1e-4)
    assert quirks.labels.tolist() == [0, 1, 0] and not quirks.iscrowd.any()
    assert records["empty"].boxes.shape == (0, 4) and records["nolabel"].boxes.shape == (0, 4)
    np.testing.assert_allclose(records["plain"].boxes, [[20, 15, 60, 45]], atol=1e-4)
    report = dm.reports[0]
    assert dict(report.counts) == {
        "duplicate label lines": 1,
        "class ids outside names": 1,
        "malformed label lines": 3,
        "boxes: outside the image": 1,
        "boxes: zero or negative size": 1,
    }
    assert dict(report.kept) == {
        "boxes outside [0, 1] (clipped)": 2,
        "segment polygons (their bounding box is used)": 1,
        "empty label files (negatives)": 1,
        "images without a label file (negatives)": 1,
    }


def test_keypoint_columns_are_left_out(tmp_path):
    yaml_file = yolo_set(
        tmp_path,
        {"train": {"p": "0 0.5 0.5 0.5 0.5 0.1 0.2 2 0.3 0.4 1\n"}},
        names="[person]",
        extra="kpt_shape: [2, 3]",
    )
    dm = YoloDataModule(str(yaml_file), val_fraction=0.5)
    records = dm.load_splits()["train"] + dm.load_splits()["val"]
    np.testing.assert_allclose(records[0].boxes, [[20, 15, 60, 45]], atol=1e-4)


def test_check_mode_lists_what_was_kept_and_dropped(tmp_path):
    yaml_file = quirky_set(tmp_path / "data")
    report = run_mode(
        ["mode=check", "task=detection", "data=yolo", f"data.root={yaml_file}", "data.image_size=64"], tmp_path / "run"
    )
    assert report["ok"] and json.loads((tmp_path / "run" / "check.json").read_text()) == report
    train = report["splits"]["train"]
    assert train["images"] == 4 and train["backgrounds"] == 2 and train["boxes"] == 4
    assert train["classes"] == {"cat": 3, "dog": 1}
    (source,) = [s for s in report["dropped"] if s.endswith("images/train")]
    assert report["dropped"][source]["duplicate label lines"] == 1
    assert report["kept"][source]["images without a label file (negatives)"] == 1
    assert any("kept 2 boxes outside [0, 1] (clipped)" in w for w in report["warnings"])


def test_a_wrong_labels_folder_stops_training_with_the_count(tmp_path):
    yaml_file = yolo_set(tmp_path, {"train": {"a": None, "b": None}})
    with pytest.raises(DataError, match="no usable boxes in 2 images.*2 images without a label file"):
        YoloDataModule(str(yaml_file)).setup("fit")


def shapes_as_yolo(tmp_path: Path) -> Path:
    """The synthetic shape scenes (COCO json) written out as YOLO files (copies)."""
    from mbtasks.data.synthetic.shapes import make_shapes_detection

    src = make_shapes_detection(
        tmp_path / "coco",
        classes=["circle", "square"],
        train_images=8,
        val_images=4,
        test_images=4,
        image_size=64,
        seed=2,
    )
    coco = CocoDataModule(
        str(src),
        "annotations/instances_train.json",
        "train",
        "annotations/instances_val.json",
        "val",
        "annotations/instances_test.json",
        "test",
    )
    return write_yolo(coco, tmp_path / "yolo", link=False)


def test_train_test_predict_on_yolo_data_through_the_cli(tmp_path):
    yaml_file = shapes_as_yolo(tmp_path)
    common = [
        "task=detection",
        "data=yolo",
        f"data.root={yaml_file}",
        "data.image_size=64",
        "data.batch_size=4",
        "backbone.width=0.25",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "task.log_images=0",
    ]
    metrics = run_mode(common, tmp_path / "train")
    assert "test/map" in metrics and "val/map_50" in metrics and metrics["train/loss"] > 0
    ckpt = tmp_path / "train" / "checkpoints" / "best.ckpt"
    tested = run_mode(["mode=test", f"ckpt_path={ckpt}"], tmp_path / "test")
    assert tested["test/map"] == pytest.approx(metrics["test/map"], abs=1e-6)
    run_mode(
        [
            "mode=predict",
            f"ckpt_path={ckpt}",
            f"predict.input={yaml_file.parent / 'images' / 'test'}",
            "predict.score_threshold=0.0",
        ],
        tmp_path / "predict",
    )
    detections = json.loads((tmp_path / "predict" / "predictions.json").read_text())
    # predictions carry the YOLO class ids (0, 1), not COCO's 1, 3
    assert detections and {d["category_id"] for d in detections} <= {0, 1}
    assert all(d["category_name"] == ["circle", "square"][d["category_id"]] for d in detections)


def voc_pairs(root: Path) -> Path:
    """A VOC set in the pairs layout: boxes in 1-based pixels, a difficult box, a negative, an xml size of 0."""
    objects = {
        "a": [("cat", (11, 6, 40, 30), 0), ("dog", (30, 20, 80, 60), 0), ("cat", (1, 1, 10, 10), 1)],
        "b": [("dog", (5, 5, 25, 45), 0)],
        "c": [],
    }
    for split in ("train", "test"):
        for name, objs in objects.items():
            image(root / split / f"{name}.jpg")
            size = (
                "<size><width>0</width><height>0</height></size>"
                if name == "b"
                else f"<size><width>{W}</width><height>{H}</height></size>"
            )
            body = "".join(
                f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
                f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                for n, b, d in objs
            )
            (root / split / f"{name}.xml").write_text(
                f"<annotation><filename>{name}.jpg</filename>{size}{body}</annotation>"
            )
    return root


def same_boxes(a: list, b: list, keep_ignored: bool) -> None:
    """Records of two readers of one data set: same images, same boxes box for box, same labels."""
    by_name = {r.path.name: r for r in b}
    assert sorted(by_name) == sorted(r.path.name for r in a)
    for rec in a:
        other = by_name[rec.path.name]
        keep = np.ones(len(rec.boxes), bool) if keep_ignored else ~rec.iscrowd
        np.testing.assert_allclose(other.boxes, rec.boxes[keep], atol=1e-3, err_msg=rec.path.name)
        assert other.labels.tolist() == rec.labels[keep].tolist()
        if keep_ignored:
            assert other.iscrowd.tolist() == rec.iscrowd.tolist()


def test_voc_written_as_yolo_gives_the_same_boxes(tmp_path):
    voc = VocDataModule(str(voc_pairs(tmp_path / "voc")), val_split=None, val_fraction=0.34)
    yaml_file = write_yolo(voc, tmp_path / "yolo")
    assert (tmp_path / "yolo" / "images" / "train").is_dir() and (
        tmp_path / "yolo" / "labels" / "test" / "c.txt"
    ).read_text() == ""
    yolo = YoloDataModule(str(yaml_file))
    yolo.setup("fit")
    assert yolo.class_names == voc.class_names
    for split in ("train", "val", "test"):
        # the difficult box is left out: YOLO has no ignore flag
        same_boxes(voc.datasets[split].records, yolo.datasets[split].records, keep_ignored=False)
    assert sum(len(r.boxes) for r in voc.datasets["test"].records) == 4
    assert sum(len(r.boxes) for r in yolo.datasets["test"].records) == 3
