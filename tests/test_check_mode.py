"""mode=check on the three tasks' data: summary, check.json, non-zero exit when the data cannot train."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mbtasks.errors import DataError
from tests.conftest import run_mode

DET_CLASSES = ["circle", "square"]


def test_check_classification_counts_corrupt_and_ignored_files(tiny_shapes, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_shapes, root)
    (root / "train" / "circle" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
    (root / "train" / "square" / "README.txt").write_text("notes")
    report = run_mode(
        ["mode=check", f"data.root={root}", "data.generator=null", "data.image_size=32"], tmp_path / "run"
    )
    on_disk = json.loads((tmp_path / "run" / "check.json").read_text())
    assert on_disk == report and report["ok"]
    assert report["splits"]["train"]["images"] == 25 and report["splits"]["train"]["readable"] == 24
    assert report["splits"]["train"]["classes"] == {"circle": 8, "square": 8, "triangle": 8}
    assert (
        report["unreadable"]["count"] == 1
        and str(root / "train" / "circle" / "truncated.jpg") in report["unreadable"]["first"]
    )
    assert report["ignored_files"] == [str(root / "train" / "square" / "README.txt")]


def test_check_fails_when_a_class_has_no_readable_image(tiny_shapes, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_shapes, root)
    for path in (root / "train" / "triangle").iterdir():
        path.write_bytes(b"")
    with pytest.raises(DataError, match="data check failed.*triangle"):
        run_mode(["mode=check", f"data.root={root}", "data.generator=null", "data.image_size=32"], tmp_path / "run")
    report = json.loads((tmp_path / "run" / "check.json").read_text())
    assert not report["ok"] and report["splits"]["train"]["classes"]["triangle"] == 0


def test_check_fails_on_a_missing_dataset_with_the_loaders_message(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        run_mode(
            ["mode=check", f"data.root={tmp_path / 'nope'}", "data.generator=null", "data.image_size=32"],
            tmp_path / "run",
        )
    assert json.loads((tmp_path / "run" / "check.json").read_text())["ok"] is False


def test_check_detection_reports_backgrounds_and_dropped_boxes(tmp_path):
    from mbtasks.data.synthetic.shapes import make_shapes_detection

    root = make_shapes_detection(
        tmp_path / "det",
        classes=DET_CLASSES,
        train_images=6,
        val_images=3,
        test_images=3,
        image_size=64,
        empty_fraction=0.0,
        seed=3,
    )
    ann = root / "annotations" / "instances_train.json"
    data = json.loads(ann.read_text())
    image_id = data["images"][0]["id"]
    next_id = max(a["id"] for a in data["annotations"]) + 1
    data["annotations"] += [
        {
            "id": next_id,
            "image_id": image_id,
            "category_id": data["categories"][0]["id"],
            "bbox": [5, 5, 0, 10],
            "area": 0,
            "iscrowd": 0,
        },
        {
            "id": next_id + 1,
            "image_id": image_id,
            "category_id": 999,
            "bbox": [5, 5, 10, 10],
            "area": 100,
            "iscrowd": 0,
        },
    ]
    # one image without any box: a background image
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != data["images"][1]["id"]]
    ann.write_text(json.dumps(data))
    report = run_mode(
        ["mode=check", "task=detection", f"data.root={root}", "data.generator=null", "data.image_size=64"],
        tmp_path / "run",
    )
    assert report["ok"]
    train = report["splits"]["train"]
    assert train["images"] + report["splits"]["val"]["images"] >= 5
    dropped = report["dropped"][str(ann)]
    assert sum(dropped.values()) >= 2, dropped
    assert sum(s.get("backgrounds", 0) for s in report["splits"].values()) >= 1
    assert set(train["classes"]) == set(DET_CLASSES)


def test_check_faces_reports_single_image_identities(tmp_path):
    from mbtasks.data.synthetic.faces import make_synthetic_faces

    root = make_synthetic_faces(tmp_path / "faces", num_identities=10, images_per_identity=3, image_size=32, seed=5)
    lonely = root / "zz_lonely"
    lonely.mkdir()
    shutil.copy(next((root / sorted(p.name for p in root.iterdir() if p.is_dir())[0]).iterdir()), lonely / "only.png")
    report = run_mode(
        [
            "mode=check",
            "task=embedding",
            f"data.root={root}",
            "data.generator=null",
            "data.image_size=32",
            "data.val_identities=2",
            "data.test_identities=2",
            "data.num_folds=2",
            "data.pairs_per_fold=4",
        ],
        tmp_path / "run",
    )
    assert report["ok"], report["errors"]
    assert report["identities"]["total"] == 11 and report["identities"]["with_one_image"] == 1
    assert report["identities"]["first_with_one_image"] == ["zz_lonely"]
    assert report["splits"]["train"]["readable"] == report["splits"]["train"]["images"] > 0


def test_cli_check_exits_2_with_one_error_line(tmp_path):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbtasks",
            "mode=check",
            f"data.root={tmp_path / 'missing'}",
            "data.generator=null",
            "data.image_size=32",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: data check failed" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "run" / "check.json").read_text())["ok"] is False
