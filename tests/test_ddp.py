"""trainer=ddp on CPU (2 gloo processes): one run dir, rank-0 files, test metrics equal to a single-process test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_cfg, run_mode

REPO = Path(__file__).resolve().parent.parent


def test_ddp_config():
    cfg = compose_cfg(["trainer=ddp"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2


@pytest.mark.slow
def test_classification_ddp_matches_single_process_test(tmp_path):
    from mbtasks.data.synthetic.shapes import make_shapes_classification

    # 12 test images: two ranks get 6 each, no padding duplicates by the distributed sampler
    root = make_shapes_classification(
        tmp_path / "shapes",
        classes=["circle", "square", "triangle"],
        train_per_class=8,
        val_per_class=4,
        test_per_class=4,
        image_size=32,
        seed=1,
    )
    run_dir = tmp_path / "run"
    args = [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        f"data.root={root}",
        "data.generator=null",
        "data.image_size=32",
        "data.batch_size=4",
        "backbone.width=0.25",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
        "task.log_images=0",
        "task.top_k=2",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "mbtasks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=500,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((run_dir / "metrics.json").read_text())
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]  # rank 0 alone writes it
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    single = run_mode(["mode=test", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"], tmp_path / "single")
    for key in ("test/acc_top1", "test/acc_top2", "test/loss"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key


def _coco_update(metric, image_ids):
    import torch

    for i in image_ids:
        gt = torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 50.0, 60.0]])
        pred = gt + torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 12.0, 0.0, 2.0]]) * (i % 3)
        metric.update(
            [{"boxes": pred, "scores": torch.tensor([0.9, 0.6]), "labels": torch.tensor([0, 1])}],
            [
                {
                    "image_id": i,
                    "orig_size": (64, 64),
                    "gt_boxes": gt,
                    "gt_labels": torch.tensor([0, 1]),
                    "gt_iscrowd": torch.tensor([False, False]),
                    "gt_area": torch.tensor([0.0, 0.0]),
                }
            ],
        )


def test_coco_map_over_gathered_ranks_equals_one_process():
    """After a DDP sync torchmetrics holds each list state as one cat'ed tensor; mAP must be the same."""
    import torch

    from mbtasks.metrics.coco import CocoMeanAP

    whole = CocoMeanAP()
    _coco_update(whole, range(1, 7))
    expected = whole.compute()
    assert 0 < expected["map"] < 1
    ranks = [CocoMeanAP(), CocoMeanAP()]
    _coco_update(ranks[0], [1, 3, 5])
    _coco_update(ranks[1], [2, 4, 6])
    gathered = CocoMeanAP()
    for name in ("images", "dets", "gts"):  # what dist_reduce_fx="cat" leaves after the all-gather
        setattr(gathered, name, torch.cat([torch.cat(getattr(r, name)) for r in ranks]))
    gathered._update_count = 1
    assert gathered.compute() == pytest.approx(expected)


@pytest.mark.slow
def test_detection_ddp_matches_single_process_test(tmp_path):
    from mbtasks.data.synthetic.shapes import make_shapes_detection

    # 96 px, batch 4: at 64 px / batch 2 the last extra layers' BatchNorm statistics (1x1 maps, two
    # values per channel) after a few steps make the eval-mode loss overflow to NaN
    # 5 test images on 2 ranks: the distributed sampler repeats one, which must be scored once
    root = make_shapes_detection(
        tmp_path / "det",
        classes=["circle", "square"],
        train_images=16,
        val_images=4,
        test_images=5,
        image_size=96,
        object_size=(0.3, 0.6),
        seed=3,
    )
    run_dir = tmp_path / "run"
    args = [
        "task=detection",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        f"data.root={root}",
        "data.generator=null",
        "data.image_size=96",
        "data.batch_size=4",
        "optimizer.lr=0.01",
        "backbone.width=0.25",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
        "task.log_images=0",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "mbtasks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=500,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((run_dir / "metrics.json").read_text())
    single = run_mode(["mode=test", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"], tmp_path / "single")
    # abs 1e-4: ranks run batches of 3 where one process runs 4, so scores differ in the last float
    # bits (1e-6 in mAP seen); scoring the repeated image twice moves mAP by far more
    for key in ("test/map", "test/map_50", "test/mar_100"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-4), key
    # test/loss is averaged over ranks too, but the SSD loss is normalised by the positives of each
    # batch, and DDP groups the images into other batches: it differs from one process's by design
    assert ddp["test/loss"] is not None  # finite (NaN is written as null)


def test_embedding_store_gathered_equals_one_process():
    """The embedding store after a DDP sync (cat'ed tensors, padding duplicates) gives the same embeddings."""
    import torch

    from mbtasks.metrics.verification import EmbeddingStore

    emb = torch.nn.functional.normalize(torch.randn(7, 5), dim=1)
    ok = torch.tensor([True, True, False, True, True, True, True])
    whole = EmbeddingStore()
    whole.update(torch.arange(7), emb, ok)
    expected = whole.compute()
    assert sorted(expected) == [0, 1, 3, 4, 5, 6]  # the unreadable image is left out
    # DistributedSampler(7 images, 2 ranks, shuffle=False): rank 0 gets 0, 2, 4, 6; rank 1 gets 1, 3, 5, 0 (padding)
    shares = [torch.tensor([0, 2, 4, 6]), torch.tensor([1, 3, 5, 0])]
    gathered = EmbeddingStore()
    gathered.index = torch.cat(shares)
    gathered.embeddings = torch.cat([emb[s] for s in shares])
    gathered.ok = torch.cat([ok[s] for s in shares])
    gathered._update_count = 1
    got = gathered.compute()
    assert sorted(got) == sorted(expected)
    for i, e in expected.items():
        assert torch.equal(got[i], e)


def test_pk_sampler_splits_batches_by_rank():
    from mbtasks.data.samplers import PKBatchSampler

    labels = [i // 4 for i in range(40)]  # 10 identities x 4 images
    single = list(PKBatchSampler(labels, p=3, k=2, num_batches=7, seed=5))
    ranks = [PKBatchSampler(labels, p=3, k=2, num_batches=7, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    assert [len(r) for r in ranks] == [4, 4]  # 7 batches rounded up to 8: both ranks step in lock-step
    per_rank = [list(r) for r in ranks]
    assert per_rank[0][:4] == single[0::2][:4] and per_rank[1][:3] == single[1::2]
    assert per_rank[0] != per_rank[1]


@pytest.mark.slow
def test_embedding_ddp_matches_single_process_test(tmp_path):
    from mbtasks.data.synthetic.faces import make_synthetic_faces

    data_dir = tmp_path / "data"
    make_synthetic_faces(data_dir / "synthetic_faces", num_identities=14, images_per_identity=4, image_size=32, seed=0)
    run_dir = tmp_path / "run"
    data = [
        f"data_dir={data_dir}",
        "data.image_size=32",
        "data.generator.num_identities=14",
        "data.generator.images_per_identity=4",
        "data.generator.image_size=32",
        "data.val_identities=3",
        "data.test_identities=3",
        "data.identities_per_batch=4",
        "data.images_per_identity=2",
        "data.num_folds=2",
        "data.pairs_per_fold=8",
    ]
    args = [
        "task=embedding",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        *data,
        "backbone.width=0.25",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
        "task.projector_identities=2",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "mbtasks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=500,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pairs dropped" not in proc.stderr + proc.stdout  # every rank's embeddings reached the protocol
    ddp = json.loads((run_dir / "metrics.json").read_text())
    assert ddp["test/num_pairs"] == 16 and ddp["val/num_pairs"] == 16
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    single = run_mode(["mode=test", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"], tmp_path / "single")
    for key in ("test/verification_acc", "test/roc_auc", "test/num_pairs", "test/accuracy_at_threshold"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key


def test_coco_map_ignores_images_the_distributed_sampler_repeats():
    """5 images on 2 ranks: DistributedSampler pads rank 1 with image 1 again; it must count once."""
    import torch

    from mbtasks.metrics.coco import CocoMeanAP

    whole = CocoMeanAP()
    _coco_update(whole, range(1, 6))
    expected = whole.compute()
    ranks = [CocoMeanAP(), CocoMeanAP()]
    _coco_update(ranks[0], [1, 3, 5])
    _coco_update(ranks[1], [2, 4, 1])
    gathered = CocoMeanAP()
    for name in ("images", "dets", "gts"):
        setattr(gathered, name, torch.cat([torch.cat(getattr(r, name)) for r in ranks]))
    gathered._update_count = 1
    assert gathered.compute() == pytest.approx(expected)
    # the same within one process (a sampler that repeats on one rank)
    repeated = CocoMeanAP()
    _coco_update(repeated, [1, 2, 3, 4, 5, 1, 2])
    assert repeated.compute() == pytest.approx(expected)
