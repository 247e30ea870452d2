"""The embedding task end to end through the CLI: train -> test -> predict (input, pairs, gallery),
the facenet_mobilenet recipe on a tiny identity folder, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mbtasks.data.faces import scan_identities
from mbtasks.data.pairs import generate_pairs, write_lfw_pairs
from mbtasks.data.synthetic.faces import make_synthetic_faces
from mbtasks.errors import ConfigError, DataError
from tests.conftest import run_mode

GEN = {"num_identities": 14, "images_per_identity": 4, "image_size": 32, "seed": 0}


def tiny_overrides(data_dir: Path) -> list[str]:
    return [
        "task=embedding",
        "backbone.width=0.25",
        f"data_dir={data_dir}",
        "data.image_size=32",
        *(f"data.generator.{k}={v}" for k, v in GEN.items()),
        "data.val_identities=3",
        "data.test_identities=3",
        "data.identities_per_batch=4",
        "data.images_per_identity=2",
        "data.num_folds=2",
        "data.pairs_per_fold=8",
        "trainer.max_epochs=1",
        "task.projector_identities=2",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run; every identity folder also holds an unreadable file."""
    base = tmp_path_factory.mktemp("embedding")
    data_dir = base / "data"
    root = make_synthetic_faces(data_dir / "synthetic_faces", **GEN)
    for folder in root.iterdir():
        if folder.is_dir():
            (folder / f"{folder.name}_0099.png").write_bytes(b"\x89PNG broken")
    overrides = tiny_overrides(data_dir)
    run_dir = base / "train"
    metrics = run_mode(overrides, run_dir)
    return {"base": base, "root": root, "overrides": overrides, "run_dir": run_dir, "metrics": metrics}


def test_train_writes_verification_metrics_and_threshold(trained):
    run_dir, metrics = trained["run_dir"], trained["metrics"]
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "test/verification_acc",
        "test/verification_acc_std",
        "test/roc_auc",
        "test/tar_at_far_1e-3",
        "test/threshold",
        "val/verification_acc",
        "val/threshold",
        "train/loss",
        "train/active_triplets",
    ):
        assert key in on_disk, key
    assert on_disk["test/num_pairs"] > 0 and on_disk["test/verification_acc"] == pytest.approx(
        metrics["test/verification_acc"]
    )
    # a few pairs only: TAR at FAR 1e-3 cannot be measured and is null, not a made-up number
    assert on_disk["test/tar_at_far_1e-3"] is None
    # the threshold chosen on validation is stored in the checkpoint and reported for test
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    stored = float(ckpt["state_dict"]["threshold"])
    assert stored == pytest.approx(on_disk["val/threshold"], rel=1e-5)
    assert stored == pytest.approx(on_disk["test/threshold"], rel=1e-5)
    # unreadable files were named, skipped and counted (every eval identity has one)
    assert metrics["data/skipped_files"] >= 6


def test_tensorboard_has_roc_and_projector(trained):
    tb = trained["run_dir"] / "tensorboard"
    assert (tb / "projector_config.pbtxt").is_file()
    assert any(p.name == "sprite.png" for p in tb.rglob("*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb))
    ea.Reload()
    assert {"val/roc", "test/roc"} <= set(ea.Tags()["images"])
    assert {"train/loss", "train/active_triplets", "val/verification_acc"} <= set(ea.Tags()["scalars"])


def test_mode_test_reevaluates_the_checkpoint(trained, tmp_path):
    ckpt = trained["run_dir"] / "checkpoints" / "best.ckpt"
    metrics = run_mode([*trained["overrides"], "mode=test", f"ckpt_path={ckpt}"], tmp_path / "test")
    assert metrics["test/verification_acc"] == pytest.approx(trained["metrics"]["test/verification_acc"], abs=1e-6)
    assert json.loads((tmp_path / "test" / "metrics.json").read_text())["test/threshold"] == pytest.approx(
        trained["metrics"]["test/threshold"]
    )


def test_predict_embeddings_pairs_and_gallery(trained, tmp_path):
    root, ckpt = trained["root"], trained["run_dir"] / "checkpoints" / "best.ckpt"
    threshold = trained["metrics"]["val/threshold"]
    queries = tmp_path / "queries"
    queries.mkdir()
    a0, a1, b0 = (
        root / "id_00000" / "id_00000_0001.png",
        root / "id_00000" / "id_00000_0002.png",
        root / "id_00001" / "id_00001_0001.png",
    )
    for src in (a0, b0):
        (queries / src.name).write_bytes(src.read_bytes())
    (queries / "broken.png").write_bytes(b"nope")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{a0} {a1}\n# a comment\n{a0}\t{b0}\nqueries/{a0.name} {a0}\n")
    gallery = tmp_path / "gallery"
    for name in ("id_00000", "id_00001", "id_00002"):
        (gallery / name).mkdir(parents=True)
        for src in sorted((root / name).glob("*_000[1-4].png")):
            (gallery / name / src.name).write_bytes(src.read_bytes())
    out_dir = tmp_path / "predict"
    out = run_mode(
        [
            *trained["overrides"],
            "mode=predict",
            f"ckpt_path={ckpt}",
            f"predict.input={queries}",
            f"predict.pairs={pairs}",
            f"predict.gallery={gallery}",
        ],
        out_dir,
    )
    # embeddings: .npy rows match the index; unreadable files named and skipped
    emb = np.load(out_dir / "embeddings.npy")
    index = json.loads((out_dir / "embeddings.json").read_text())
    assert emb.shape == (2, 128) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert [Path(f).name for f in index["files"]] == ["id_00000_0001.png", "id_00001_0001.png"]
    assert any(k.endswith("broken.png") for k in index["skipped"])
    # pairs: distance and the decision at the stored threshold; relative paths from the file's folder
    result = json.loads((out_dir / "pairs.json").read_text())
    assert result["threshold"] == pytest.approx(threshold, rel=1e-5)
    assert len(result["pairs"]) == 3
    for row in result["pairs"]:
        assert row["same"] == (row["distance"] <= result["threshold"])
    assert result["pairs"][2]["distance"] == pytest.approx(0.0, abs=1e-5) and result["pairs"][2]["same"]
    # gallery: each query's nearest gallery image is itself (distance 0), so its identity
    gal = json.loads((out_dir / "gallery.json").read_text())
    assert gal["gallery_identities"] == 3
    got = {Path(q["file"]).name: (q["identity"], q["distance"], q["match"]) for q in gal["queries"]}
    assert got["id_00000_0001.png"][0] == "id_00000" and got["id_00001_0001.png"][0] == "id_00001"
    assert all(d == pytest.approx(0.0, abs=1e-5) and m for _, d, m in got.values())
    assert out["pairs"]["threshold"] == result["threshold"]


def test_predict_with_pairs_only_and_bad_pairs_file(trained, tmp_path):
    root, ckpt = trained["root"], trained["run_dir"] / "checkpoints" / "best.ckpt"
    pairs = tmp_path / "pairs.txt"
    a, b = root / "id_00003" / "id_00003_0001.png", root / "id_00003" / "id_00003_0002.png"
    pairs.write_text(f"{a} {b}\n")
    base = [*trained["overrides"], "mode=predict", f"ckpt_path={ckpt}"]
    out = run_mode([*base, f"predict.pairs={pairs}"], tmp_path / "p1")
    assert len(out["pairs"]["pairs"]) == 1 and not (tmp_path / "p1" / "embeddings.npy").exists()
    pairs.write_text(f"{a} {b}\n{a} {root / 'id_00003' / 'missing.png'}\n")
    with pytest.raises(DataError, match=r"pairs.txt:2: image .*missing.png not found"):
        run_mode([*base, f"predict.pairs={pairs}"], tmp_path / "p2")
    with pytest.raises(ConfigError, match="predict.gallery needs query images"):
        run_mode([*base, f"predict.gallery={root}"], tmp_path / "p3")
    with pytest.raises(ConfigError, match="mode=predict needs predict.input"):
        run_mode(base, tmp_path / "p4")


def test_facenet_recipe_runs_two_steps_on_a_tiny_identity_folder(tmp_path):
    """The aligned-faces recipe with an LFW-format pairs file for its test split."""
    train_root = make_synthetic_faces(
        tmp_path / "casia", num_identities=10, images_per_identity=4, image_size=32, seed=5
    )
    lfw_root = make_synthetic_faces(tmp_path / "lfw", num_identities=6, images_per_identity=3, image_size=32, seed=6)
    write_lfw_pairs(
        generate_pairs(scan_identities(lfw_root), num_folds=2, pairs_per_fold=6, seed=0), tmp_path / "pairs.txt"
    )
    metrics = run_mode(
        [
            "experiment=facenet_mobilenet",
            "backbone.width=0.25",
            f"data.root={train_root}",
            f"data.test_root={lfw_root}",
            f"data.test_pairs={tmp_path / 'pairs.txt'}",
            "data.image_size=32",
            "data.val_identities=3",
            "data.num_folds=2",
            "data.pairs_per_fold=6",
            "data.identities_per_batch=3",
            "data.images_per_identity=2",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
        ],
        tmp_path / "run",
    )
    assert metrics["test/num_pairs"] == 12.0  # the pairs file's pairs
    assert metrics["test/verification_acc"] == metrics["test/verification_acc"]  # not NaN: pairs were evaluated
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "test_pairs: " + str(tmp_path / "pairs.txt") in cfg


def test_too_few_identities_fails_cleanly_through_the_cli(tmp_path):
    root = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for name, n in (("a", 3), ("b", 1)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    with pytest.raises(DataError, match="needs at least 2 identities with >= 2 images each, found 1"):
        run_mode(
            ["task=embedding", "data=faces", f"data.root={root}", "data.image_size=32", "backbone.width=0.25"],
            tmp_path / "run",
        )
