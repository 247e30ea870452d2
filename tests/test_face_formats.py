"""Face-detection annotation formats: dlib imglab xml (data=dlib_xml) and WIDER FACE txt (data=wider_face),
on small generated files: boxes, ignore regions, flags, what is skipped and counted, mode=check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mbtasks.data.dlib_xml import DlibXmlDataModule, load_imglab
from mbtasks.data.wider_face import FLAGS, WiderFaceDataModule, load_wider, parse_wider
from mbtasks.errors import DataError
from tests.conftest import compose_cfg, run_mode


def image(path: Path, size: tuple[int, int] = (120, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 100, 80)).save(path)
    return path


def imglab(root: Path) -> Path:
    """dlib's own face files' shape: a training.xml and a testing.xml next to their photos."""
    for name in ("p1.jpg", "p2.jpg", "p3.jpg", "t1.jpg"):
        image(root / name)
    (root / "training.xml").write_text("""<?xml version='1.0' encoding='ISO-8859-1'?>
<?xml-stylesheet type='text/xsl' href='image_metadata_stylesheet.xsl'?>
<dataset>
<name>Training faces</name>
<images>
  <image file='p1.jpg' width='120' height='90'>
    <box top='10' left='20' width='30' height='31'/>
    <box top='50' left='60' width='20' height='20' ignore='1'/>
    <box top='5' left='100' width='40' height='40' occluded='1'/>
  </image>
  <image file='p2.jpg'>
    <box top='0' left='0' width='25' height='25'><label>face</label><part name='0' x='5' y='5'/></box>
    <box top='20' left='20' width='0' height='10'/>
    <box top='30' left='30' width='10' height='10'><label>cat</label></box>
  </image>
  <image file='p3.jpg'/>
  <image file='missing.jpg'><box top='1' left='1' width='5' height='5'/></image>
  <image file='../outside.jpg'><box top='1' left='1' width='5' height='5'/></image>
</images>
</dataset>
""")
    (root / "testing.xml").write_text(
        "<dataset><images><image file='t1.jpg'>"
        "<box top='40' left='40' width='20' height='22'/></image></images></dataset>"
    )
    return root


def test_imglab_boxes_ignore_regions_and_skips(tmp_path):
    root = imglab(tmp_path)
    records, report = load_imglab(root / "training.xml", ["face"], "face")
    p1, p2, p3 = records
    # left, top, width, height -> x1y1x2y2; a box running off the right edge is clipped
    np.testing.assert_array_equal(p1.boxes, [[20, 10, 50, 41], [60, 50, 80, 70], [100, 5, 120, 45]])
    assert p1.iscrowd.tolist() == [False, True, False] and p1.num_trainable == 2
    assert p1.attributes["occluded"].tolist() == [0, 0, 1]
    assert (p2.width, p2.height) == (120, 90)  # no size in the xml: read from the file
    np.testing.assert_array_equal(p2.boxes, [[0, 0, 25, 25]])
    assert p3.boxes.shape == (0, 4)  # an image without boxes is a negative
    assert dict(report.counts) == {
        "boxes: zero or negative size": 1,
        "unknown class names": 1,
        "missing image files": 1,
        "file names outside the image folder": 1,
    }


def test_dlib_xml_data_module_labels_and_splits(tmp_path):
    root = imglab(tmp_path)
    dm = DlibXmlDataModule(str(root), val_xml="training.xml")
    dm.setup("fit")
    assert dm.class_names == ["cat", "face"]  # <label>s, and "face" for boxes without one
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [3, 3, 1]
    assert dm.datasets["train"].records[1].labels.tolist() == [1, 0]
    one = DlibXmlDataModule(str(root), class_names=["face"], test_xml=None, val_fraction=0.34)
    one.setup("fit")
    assert one.class_names == ["face"] and one.test_split == "val" and len(one.datasets["val"]) == 1
    with pytest.raises(DataError, match="not valid xml"):
        (root / "bad.xml").write_text("<dataset><images>")
        DlibXmlDataModule(str(root), train_xml="bad.xml").setup("fit")
    with pytest.raises(DataError, match="nope.xml: dlib imglab xml not found"):
        DlibXmlDataModule(str(root), train_xml="nope.xml").setup("fit")


def test_check_mode_on_dlib_xml_counts_ignore_regions(tmp_path):
    root = imglab(tmp_path / "faces")
    cfg = compose_cfg(["task=detection", "data=dlib_xml", f"data.root={root}"])
    assert cfg.data._target_.endswith("DlibXmlDataModule") and cfg.data.default_label == "face"
    report = run_mode(
        [
            "mode=check",
            "task=detection",
            "data=dlib_xml",
            f"data.root={root}",
            "data.val_xml=training.xml",
            "data.image_size=64",
        ],
        tmp_path / "run",
    )
    assert report["ok"], report["errors"]
    assert report["splits"]["train"]["ignored"] == 1 and report["splits"]["train"]["boxes"] == 4
    assert report["splits"]["train"]["backgrounds"] == 1
    assert report["dropped"][str(root / "training.xml")]["missing image files"] == 1


WIDER_TXT = """0--Parade/0_Parade_a.jpg
3
10 10 30 40 0 0 0 0 0 0
50 20 20 8 2 0 1 0 0 0
70 5 25 25 1 1 0 1 2 1
1--Handshaking/1_b.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/1_c.jpg
2
5 5 0 0 0 0 0 1 0 0
20 30 15 15 0 0 0 0 0 0
2--Demonstration/2_missing.jpg
1
1 1 20 20 0 0 0 0 0 0
"""


def wider(root: Path, txt: str = WIDER_TXT) -> Path:
    for name in ("0--Parade/0_Parade_a.jpg", "1--Handshaking/1_b.jpg", "1--Handshaking/1_c.jpg"):
        image(root / "WIDER_train" / "images" / name)
        image(root / "WIDER_val" / "images" / name)
    (root / "wider_face_split").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_text(txt)
    return root


def test_wider_boxes_ignore_rule_and_flags(tmp_path):
    root = wider(tmp_path)
    records, report = load_wider(
        root / "wider_face_split" / "wider_face_train_bbx_gt.txt", root / "WIDER_train" / "images"
    )
    a, b, c = records
    np.testing.assert_array_equal(a.boxes, [[10, 10, 40, 50], [50, 20, 70, 28], [70, 5, 95, 30]])
    # 8 px tall: ignore (10 px or less); flagged invalid: ignore
    assert a.iscrowd.tolist() == [False, True, True] and a.labels.tolist() == [0, 0, 0]
    assert a.attributes["blur"].tolist() == [0, 2, 1] and a.attributes["occlusion"].tolist() == [0, 0, 2]
    assert set(a.attributes) == set(FLAGS)
    assert b.boxes.shape == (0, 4)  # count 0 and its line of zeros: a negative
    np.testing.assert_array_equal(c.boxes, [[20, 30, 35, 45]])
    assert dict(report.counts) == {"boxes: zero or negative size": 1, "missing image files": 1}
    assert any("1_c.jpg face 0 (line 11)" in m for m in report.messages)
    assert dict(report.kept) == {"faces 10 px tall or less (ignore regions)": 1, "invalid faces (ignore regions)": 1}
    records, _ = load_wider(
        root / "wider_face_split" / "wider_face_train_bbx_gt.txt", root / "WIDER_train" / "images", ignore_height=0
    )
    assert records[0].iscrowd.tolist() == [False, False, True]


def test_wider_count_zero_without_its_zeros_line_and_broken_files(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("a/x.jpg\n0\na/y.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n")
    assert [(n, len(rows)) for n, _, rows in parse_wider(path)] == [("a/x.jpg", 0), ("a/y.jpg", 1)]
    path.write_text("a/x.jpg\n2\n1 2 3 4 0 0 0 0 0 0\na/y.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n")
    with pytest.raises(DataError, match=r"gt.txt:4: a/x.jpg \(line 1\) says 2 faces, but only 1"):
        parse_wider(path)
    path.write_text("a/x.jpg\nthree\n")
    with pytest.raises(DataError, match="gt.txt:2: expected the number of faces of a/x.jpg"):
        parse_wider(path)


def test_wider_data_module_and_check_mode(tmp_path):
    root = wider(tmp_path / "wider")
    dm = WiderFaceDataModule(str(root))
    dm.setup("fit")
    assert dm.class_names == ["face"] and dm.test_split == "val" and len(dm.datasets["val"]) == 3
    report = run_mode(
        ["mode=check", "task=detection", "data=wider_face", f"data.root={root}", "data.image_size=64"], tmp_path / "run"
    )
    assert report["ok"], report["errors"]
    train = report["splits"]["train"]
    assert train["boxes"] == 2 and train["ignored"] == 2 and train["backgrounds"] == 1
    assert any("kept 1 faces 10 px tall or less" in w for w in report["warnings"])
