"""Identity folders, verification pairs, the P x K sampler and the synthetic faces."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mbtasks.data.faces import (
    EvalImageDataset,
    FacesDataModule,
    IdentityDataset,
    scan_identities,
    split_identities,
)
from mbtasks.data.pairs import generate_pairs, read_lfw_pairs, write_lfw_pairs
from mbtasks.data.samplers import PKBatchSampler
from mbtasks.data.synthetic.faces import make_synthetic_faces
from mbtasks.errors import DataError


def _write_faces(root: Path, counts: dict[str, int], size: int = 32, ext: str = "png") -> Path:
    """LFW-named identity folders of random images: ``root/<name>/<name>_<nnnn>.<ext>``."""
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                root / name / f"{name}_{i:04d}.{ext}"
            )
    return root


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces") / "synthetic_faces"
    return make_synthetic_faces(root, num_identities=16, images_per_identity=4, image_size=32, seed=3)


# ------------------------------------------------------------------ pairs.txt
def test_read_lfw_pairs_with_folds(tmp_path):
    root = _write_faces(tmp_path / "lfw", {"Ann": 3, "Bob": 2, "Cid": 2, "Dee": 1}, ext="jpg")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "2\t2\n"
        "Ann\t1\t2\nBob\t1\t2\nAnn\t3\tBob\t1\nCid\t1\tDee\t1\n"
        "Ann\t1\t3\nCid\t1\t2\nBob\t2\tDee\t1\nAnn\t2\tCid\t2\n"
    )
    ps = read_lfw_pairs(pairs, root)
    assert len(ps) == 8
    assert ps.same.tolist() == [True, True, False, False] * 2
    assert ps.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    a, b = ps.pairs[0]
    assert ps.images[a].name == "Ann_0001.jpg" and ps.images[b].name == "Ann_0002.jpg"
    a, b = ps.pairs[3]
    assert ps.identities[ps.labels[a]] == "Cid" and ps.identities[ps.labels[b]] == "Dee"
    assert len(ps.images) == len(set(ps.images)) == 8  # each image once


def test_read_lfw_pairs_without_header_deals_folds(tmp_path):
    root = _write_faces(tmp_path / "lfw", {"Ann": 4, "Bob": 4})
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("Ann 1 2\nAnn 3 4\nBob 1 2\nBob 3 4\nAnn 1 Bob 1\nAnn 2 Bob 2\nAnn 3 Bob 3\nAnn 4 Bob 4\n")
    ps = read_lfw_pairs(pairs, root, num_folds=2)
    assert ps.num_folds == 2
    for fold in (0, 1):  # both kinds in every fold
        assert set(ps.same[ps.folds == fold].tolist()) == {True, False}


def test_pairs_file_naming_a_missing_image_names_the_line(tmp_path):
    root = _write_faces(tmp_path / "lfw", {"Ann": 2, "Bob": 1})
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("Ann 1 2\n\nAnn 1 Bob 7\n")
    with pytest.raises(DataError, match=r"pairs.txt:3: image .*Bob_0007\.\* not found"):
        read_lfw_pairs(pairs, root)
    pairs.write_text("Ann 1 2 3 4 5\n")
    with pytest.raises(DataError, match=r"pairs.txt:1: expected"):
        read_lfw_pairs(pairs, root)


def test_generated_pairs_are_balanced_fold_structured_and_deterministic(tmp_path):
    counts = {f"p{i:02d}": (1 if i % 5 == 0 else 4) for i in range(25)}
    ids = scan_identities(_write_faces(tmp_path / "ids", counts))
    a = generate_pairs(ids, num_folds=10, pairs_per_fold=6, seed=7)
    b = generate_pairs(ids, num_folds=10, pairs_per_fold=6, seed=7)
    assert np.array_equal(a.pairs, b.pairs) and np.array_equal(a.same, b.same)
    assert a.num_folds == 10
    for fold in range(10):
        kinds = Counter(a.same[a.folds == fold].tolist())
        assert kinds[True] == kinds[False] == 3
    labels = np.asarray(a.labels)
    # same pairs share an identity, different pairs do not; no pair repeats an image
    assert (labels[a.pairs[a.same, 0]] == labels[a.pairs[a.same, 1]]).all()
    assert (labels[a.pairs[~a.same, 0]] != labels[a.pairs[~a.same, 1]]).all()
    assert (a.pairs[:, 0] != a.pairs[:, 1]).all()
    # identity-disjoint folds (25 identities >= 2 x 10 folds)
    fold_ids = [set(labels[a.pairs[a.folds == f]].ravel()) for f in range(10)]
    assert all(fold_ids[i].isdisjoint(fold_ids[j]) for i in range(10) for j in range(i + 1, 10))
    # single-image identities only ever appear in different pairs
    singles = {i for i, n in enumerate(a.identities) if counts[n] == 1}
    assert not singles & set(labels[a.pairs[a.same]].ravel())


def test_generated_pairs_round_trip_through_lfw_format(tmp_path):
    root = _write_faces(tmp_path / "ids", {f"p{i}": 3 for i in range(6)})
    ps = generate_pairs(scan_identities(root), num_folds=3, pairs_per_fold=4, seed=0)
    write_lfw_pairs(ps, tmp_path / "pairs.txt")
    back = read_lfw_pairs(tmp_path / "pairs.txt", root)
    assert (tmp_path / "pairs.txt").read_text().startswith("3\t2\n")
    got = {(str(back.images[i]), str(back.images[j]), s) for (i, j), s in zip(back.pairs, back.same, strict=True)}
    want = {(str(ps.images[i]), str(ps.images[j]), s) for (i, j), s in zip(ps.pairs, ps.same, strict=True)}
    assert got == want


# ------------------------------------------------------------ identity split
def test_split_is_identity_disjoint_deterministic_and_keeps_positives(tmp_path):
    counts = {f"p{i:02d}": (1 if i % 4 == 0 else 3) for i in range(40)}
    ids = scan_identities(_write_faces(tmp_path / "ids", counts, size=8))
    train, val, test = split_identities(ids, 0.1, 6, seed=1)
    assert (train, val, test) == split_identities(ids, 0.1, 6, seed=1)
    assert len(val) == 4 and len(test) == 6 and len(train) == 30
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    for split in (train, val, test):
        assert any(counts[n] >= 2 for n in split)


def test_datamodule_split_by_identity_never_by_image(tiny_synthetic):
    dm = FacesDataModule(
        str(tiny_synthetic),
        image_size=32,
        identities_per_batch=4,
        images_per_identity=2,
        val_identities=3,
        test_identities=3,
        num_folds=2,
        pairs_per_fold=6,
        num_workers=0,
    )
    dm.setup("fit")
    train_ids = {p.parent.name for p, _ in dm.train_set.samples}
    val_ids, test_ids = set(dm.pair_set("val").identities), set(dm.pair_set("test").identities)
    assert len(train_ids) == 10 and len(val_ids) == 3 and len(test_ids) == 3
    assert not (train_ids & val_ids or train_ids & test_ids or val_ids & test_ids)
    assert dm.info["num_train_identities"] == 10
    assert dm.info["image_size"] == 32 and len(dm.info["mean"]) == 3


def test_too_few_identities_with_two_images_is_a_clear_error(tmp_path):
    root = _write_faces(tmp_path / "ids", {"a": 3, "b": 1, "c": 1}, size=8)
    dm = FacesDataModule(str(root), num_workers=0)
    with pytest.raises(DataError, match=r"needs at least 2 identities with >= 2 images each, found 1 \(of 3"):
        dm.setup("fit")
    with pytest.raises(DataError, match="no identity folders"):
        FacesDataModule(str(tmp_path / "ids" / "a"), num_workers=0).setup("fit")


def test_pairs_file_identities_are_kept_out_of_training(tmp_path):
    root = _write_faces(tmp_path / "ids", {f"p{i}": 3 for i in range(10)}, size=32)
    (tmp_path / "pairs.txt").write_text("p0 1 2\np1 1 2\np0 1 p1 1\np0 2 p1 3\n")
    dm = FacesDataModule(
        str(root),
        image_size=32,
        val_identities=2,
        test_pairs=str(tmp_path / "pairs.txt"),
        num_folds=2,
        pairs_per_fold=4,
        num_workers=0,
    )
    dm.setup("test")
    train_ids = {p.parent.name for p, _ in dm.train_set.samples}
    assert dm.pair_set("test").identities == ["p0", "p1"]
    assert not train_ids & {"p0", "p1"} and len(train_ids) == 6


# ------------------------------------------------------------------- sampler
def test_pk_sampler_invariants():
    labels = [0] * 5 + [1] * 2 + [2] * 4 + [3] * 1 + [4] * 6 + [5] * 3
    sampler = PKBatchSampler(labels, p=3, k=4, num_batches=20, seed=0)
    assert sampler.single_image_identities == 1
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    seen = Counter()
    for batch in batches:
        assert len(batch) == 12
        per_id = Counter(labels[i] for i in batch)
        assert len(per_id) == 3 and set(per_id.values()) == {4}  # P identities x K images
        assert 3 not in per_id  # a single image cannot give a positive
        for label in per_id:
            idx = [i for i in batch if labels[i] == label]
            if labels.count(label) >= 4:
                assert len(set(idx)) == 4  # no repeats when the identity has K images
            else:
                assert set(idx) == {i for i, v in enumerate(labels) if v == label}  # all of them, then repeats
        seen.update(per_id)
    assert set(seen) == {0, 1, 2, 4, 5}
    assert max(seen.values()) - min(seen.values()) <= 8  # identities visited in rounds
    again = PKBatchSampler(labels, p=3, k=4, num_batches=20, seed=0)
    assert list(again) == batches  # deterministic
    assert list(sampler) != batches  # a new epoch reshuffles


def test_pk_sampler_default_length_and_small_p():
    labels = [0] * 8 + [1] * 8
    sampler = PKBatchSampler(labels, p=16, k=4)
    assert sampler.p == 2 and len(sampler) == 2
    with pytest.raises(DataError):
        PKBatchSampler([0, 0, 1], p=2, k=2)


# ----------------------------------------------------------------- bad input
def test_unreadable_images_are_named_skipped_and_counted(tmp_path):
    root = _write_faces(tmp_path / "ids", {"a": 3}, size=16)
    bad = root / "a" / "a_0002.png"
    bad.write_bytes(b"not an image")
    samples = [(p, 0) for p in sorted((root / "a").iterdir())]
    train = IdentityDataset(samples, None, (0.5,) * 3, (0.5,) * 3)
    image, label = train[1]  # the bad one: replaced by another image of the same identity
    assert label == 0 and image.shape == (3, 16, 16)
    assert list(train.skips.skipped) == [str(bad)]
    ev = EvalImageDataset([p for p, _ in samples], None, (0.5,) * 3, (0.5,) * 3, 16)
    _, index, ok = ev[1]
    assert index == 1 and ok is False
    assert ev[0][2] is True
    assert str(bad) in ev.skips.skipped and "cannot identify" in ev.skips.skipped[str(bad)]


# ----------------------------------------------------------- synthetic faces
def test_synthetic_faces_layout_and_determinism(tiny_synthetic, tmp_path):
    ids = scan_identities(tiny_synthetic)
    assert len(ids) == 16 and all(len(v) == 4 for v in ids.values())
    first = ids["id_00000"][0]
    assert first.name == "id_00000_0001.png"
    assert Image.open(first).size == (32, 32)
    before = first.stat().st_mtime_ns
    make_synthetic_faces(tiny_synthetic, num_identities=16, images_per_identity=4, image_size=32, seed=3)
    assert first.stat().st_mtime_ns == before  # complete: not rewritten
    other = make_synthetic_faces(tmp_path / "again", num_identities=16, images_per_identity=4, image_size=32, seed=3)
    assert (other / "id_00005" / "id_00005_0003.png").read_bytes() == (
        tiny_synthetic / "id_00005" / "id_00005_0003.png"
    ).read_bytes()


def test_synthetic_images_of_one_identity_vary(tiny_synthetic):
    """Images of one identity differ from each other about as much as from other identities (pixels)."""
    ids = scan_identities(tiny_synthetic)
    arrays = {n: [np.asarray(Image.open(p), np.float32) for p in v] for n, v in ids.items()}
    within, between = [], []
    names = sorted(arrays)
    for n in names:
        imgs = arrays[n]
        within += [np.abs(imgs[i] - imgs[j]).mean() for i in range(4) for j in range(i + 1, 4)]
    for a, b in zip(names, names[1:], strict=False):
        between += [np.abs(x - y).mean() for x in arrays[a] for y in arrays[b]]
    assert np.mean(within) > 0.8 * np.mean(between)
