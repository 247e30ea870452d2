"""The field's verification pair files: CALFW / CPLFW lists and insightface ``.bin`` packs (issue 25)."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mbtasks.data.faces import FacesDataModule
from mbtasks.data.pairs import read_pairs
from mbtasks.errors import DataError


def _png(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _calfw(tmp_path: Path) -> tuple[Path, Path]:
    """A CALFW-style folder of aligned images and its pairs file: 2 folds of one same + one different pair."""
    images = tmp_path / "aligned images"
    images.mkdir()
    for i, name in enumerate(["Ann_Lee_0001", "Ann_Lee_0002", "Bo_0001", "Cy_Do_0003", "Cy_Do_0004", "Ed_0001"]):
        (images / f"{name}.jpg").write_bytes(_png(i))  # content sniffed on decode, not by extension
    pairs = tmp_path / "pairs_CALFW.txt"
    lines = [
        "Ann_Lee_0001.jpg 1", "Ann_Lee_0002.jpg 1",
        "Ann_Lee_0001.jpg 0", "Bo_0001.jpg 0",
        "Cy_Do_0003.jpg 2", "Cy_Do_0004.jpg 2",
        "Cy_Do_0004.jpg 0", "Ed_0001.jpg 0",
    ]  # fmt: skip
    pairs.write_text("\n".join(lines) + "\n")
    return pairs, images


def test_calfw_pairs_are_read_as_consecutive_lines(tmp_path):
    pairs, images = _calfw(tmp_path)
    pair_set = read_pairs(pairs, images, num_folds=2)
    assert pair_set.same.tolist() == [True, False, True, False]
    assert pair_set.folds.tolist() == [0, 0, 1, 1]  # the file's order: both kinds in each block
    assert pair_set.identities == ["Ann_Lee", "Bo", "Cy_Do", "Ed"]
    names = [[pair_set.images[i].name for i in pair] for pair in pair_set.pairs]
    assert names[1] == ["Ann_Lee_0001.jpg", "Bo_0001.jpg"]
    assert len(pair_set.images) == 6 and pair_set.source == str(pairs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a_0001.jpg 1\nb_0001.jpg 0\n", "labels 1 and 0 of one pair disagree"),
        ("a_0001.jpg 1\na_0002.jpg 1\nb_0001.jpg 0\n", "3 image lines, expected an even number"),
        ("../a_0001.jpg 1\na_0002.jpg 1\n", "climbs out of"),
        ("a_0001.jpg one\na_0002.jpg 1\n", r"pairs_x.txt:1: expected '<image file> <label>'"),
        ("a_0001.jpg 1\nmissing_0001.jpg 1\n", "missing_0001.jpg not found"),
    ],
)
def test_bad_calfw_pairs_name_the_line(tmp_path, text, message):
    images = tmp_path / "img"
    images.mkdir()
    for name in ("a_0001", "a_0002", "b_0001"):
        (images / f"{name}.jpg").write_bytes(_png(0))
    (tmp_path / "pairs_x.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        read_pairs(tmp_path / "pairs_x.txt", images)


def _pack(path: Path, flags, images: int | None = None) -> Path:
    blobs = [_png(i) for i in range(images if images is not None else 2 * len(flags))]
    with open(path, "wb") as f:
        pickle.dump((blobs, list(flags)), f, protocol=pickle.HIGHEST_PROTOCOL)  # as insightface's lfw2pack.py
    return path


def test_insightface_pack_is_unpacked_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pack = _pack(tmp_path / "agedb_30.bin", [True, False, True, False])
    pair_set = read_pairs(pack, tmp_path / "unused", num_folds=2)
    assert pair_set.same.tolist() == [True, False, True, False] and pair_set.folds.tolist() == [0, 0, 1, 1]
    assert pair_set.pairs.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert all(p.is_file() and p.suffix == ".png" for p in pair_set.images)
    assert str(pair_set.images[0]).startswith(str(tmp_path / "cache" / "mbtasks" / "pairs" / "agedb_30-"))
    assert Image.open(pair_set.images[3]).size == (16, 16)
    labels = pair_set.labels
    assert labels[0] == labels[1] and labels[2] != labels[3]  # same pairs share an identity, others do not
    written = pair_set.images[0].stat().st_mtime_ns
    assert read_pairs(pack, tmp_path).images == pair_set.images
    assert pair_set.images[0].stat().st_mtime_ns == written  # the second read reuses the unpacked images


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pack_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    marker = tmp_path / "ran"
    bad = tmp_path / "lfw.bin"
    bad.write_bytes(pickle.dumps(([_png(0), _RunsCode(marker)], [True])))
    with pytest.raises(DataError, match=r"lfw.bin: refused: it names .*mkdir.*without running pickled code"):
        read_pairs(bad, tmp_path)
    assert not marker.exists()
    flags = tmp_path / "cfp_fp.bin"
    flags.write_bytes(pickle.dumps(([_png(0), _png(1)], np.array([True]))))  # numpy arrays need numpy's code
    with pytest.raises(DataError, match="refused: it names numpy"):
        read_pairs(flags, tmp_path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (pickle.dumps(([_png(0)], [True])), "1 images for 1 pairs"),
        (pickle.dumps({"a": 1}), "expected a pickled .images, same flags. pair of lists"),
        (pickle.dumps(([b"GIF89a", b"GIF89a"], [True])), "image 0 is neither JPEG nor PNG"),
        (b"not a pickle", "not an insightface verification pack"),
    ],
)
def test_bad_packs_say_what_is_wrong(tmp_path, monkeypatch, payload, message):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "x.bin").write_bytes(payload)
    with pytest.raises(DataError, match=message):
        read_pairs(tmp_path / "x.bin", tmp_path)


def test_faces_data_tests_on_a_calfw_file(tmp_path):
    """``data.test_pairs`` takes the CALFW list: its persons are the test split."""
    pairs, images = _calfw(tmp_path)
    root = tmp_path / "ids"
    rng = np.random.default_rng(0)
    for i in range(6):
        (root / f"p{i}").mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / f"p{i}" / f"{j}.png")
    dm = FacesDataModule(
        str(root),
        image_size=16,
        val_identities=2,
        test_pairs=str(pairs),
        test_root=str(images),
        num_folds=2,
        pairs_per_fold=4,
        num_workers=0,
    )
    dm.setup("test")
    assert dm.pair_set("test").identities == ["Ann_Lee", "Bo", "Cy_Do", "Ed"]
    assert dm.pair_set("test").same.tolist() == [True, False, True, False]
