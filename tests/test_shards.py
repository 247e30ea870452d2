"""data=shards: an ImageFolder written as LitData shards, read back once per sample across ranks and workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("litdata")  # the stream extra (make test installs it)

from mbtasks.data.shards import META, ShardsDataModule, write_shards  # noqa: E402
from mbtasks.errors import DataError  # noqa: E402
from tests.conftest import TINY_CLASSES, run_mode  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path]:
    """``(image folder, shards)``: 3 classes x 8 / 3 / 3 images of 32 px, plus one unreadable train file."""
    from mbtasks.data.synthetic.shapes import make_shapes_classification

    root = make_shapes_classification(
        tmp_path_factory.mktemp("shapes"),
        classes=TINY_CLASSES,
        train_per_class=8,
        val_per_class=3,
        test_per_class=3,
        image_size=32,
        seed=1,
    )
    (root / "train" / "circle" / "broken.png").write_bytes(b"not an image")
    out = tmp_path_factory.mktemp("shards") / "shapes"
    write_shards(root, out, workers=2)
    return root, out


def module(out: Path, **kw) -> ShardsDataModule:
    dm = ShardsDataModule(str(out), **{"image_size": 32, "batch_size": 4, "num_workers": 0, **kw})
    dm.setup("fit")
    return dm


def test_write_stores_encoded_files_and_counts_unreadable(shards):
    root, out = shards
    meta = json.loads((out / META).read_text())
    assert meta["class_names"] == TINY_CLASSES
    assert meta["splits"] == {
        "train": {"samples": 24, "skipped": 1},
        "val": {"samples": 9, "skipped": 0},
        "test": {"samples": 9, "skipped": 0},
    }
    import litdata

    ds = litdata.StreamingDataset(str(out / "val"))
    sample = ds[0]
    # the file's own bytes, not decoded pixels
    assert sample["image"] == (root / sample["name"]).read_bytes()
    assert TINY_CLASSES[sample["label"]] == Path(sample["name"]).parent.name


def test_existing_shards_are_not_overwritten(shards, tmp_path):
    root, out = shards
    before = (out / "val" / "index.json").read_text()
    with pytest.raises(DataError, match="already there; pass --overwrite"):
        write_shards(root, out, workers=1)
    assert (out / "val" / "index.json").read_text() == before


def test_loaders_give_imagefolder_batches(shards):
    _, out = shards
    dm = module(out)
    assert dm.info["class_names"] == TINY_CLASSES and dm.test_split == "test"
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == (4, 3, 32, 32) and y.dtype.is_floating_point is False
    labels = [int(v) for _, y in dm.val_dataloader() for v in y]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_not_a_shards_folder_and_wrong_classes(shards, tmp_path):
    _, out = shards
    with pytest.raises(DataError, match=rf"{META}: not found"):
        module(tmp_path)
    with pytest.raises(DataError, match="differ from"):
        module(out, class_names=["a", "b", "c"])


def test_resume_mid_epoch_from_loader_state(shards):
    """StreamingDataLoader.state_dict after 2 batches: a new loader yields exactly the rest of the epoch."""
    import litdata

    _, out = shards

    def loader():
        ds = litdata.StreamingDataset(str(out / "train"), shuffle=True, seed=3, transform=_index_only)
        return litdata.StreamingDataLoader(ds, batch_size=4, num_workers=0)

    epoch = [int(i) for b in loader() for i in b]
    first = loader()
    it = iter(first)
    seen = [int(i) for _ in range(2) for i in next(it)]
    state = first.state_dict()
    second = loader()
    second.load_state_dict(state)
    rest = [int(i) for b in second for i in b]
    assert len(epoch) == 24 and len(seen) == 8 and seen + rest == epoch


def _rank(rank: int, out: str, port: int, result: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    dm = ShardsDataModule(out, image_size=32, batch_size=2, num_workers=2)
    dm.setup("fit")
    train = dm.train_dataloader()
    val = dm.val_dataloader()
    for loader in (train, val):
        loader.dataset.transform = _index_only  # only who reads which sample counts here
    seen = {"val": [int(i) for b in val for i in b], "train": [[int(i) for b in train for i in b] for _ in range(2)]}
    Path(result, f"{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def _index_only(sample: dict) -> int:
    return sample["index"]


def test_two_ranks_two_workers_read_each_sample_once(shards, tmp_path):
    """2 gloo processes x 2 loader workers: validation reads every sample exactly once; each training
    epoch gives both ranks the same number of distinct samples, dropping fewer than one round of batches."""
    import socket

    import torch.multiprocessing as mp

    _, out = shards
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(str(out), port, str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    val = ranks[0]["val"] + ranks[1]["val"]
    assert sorted(val) == list(range(9)) and ranks[0]["val"] and ranks[1]["val"]
    for epoch in (0, 1):
        a, b = ranks[0]["train"][epoch], ranks[1]["train"][epoch]
        assert len(a) == len(b) and not set(a) & set(b) and len(set(a)) == len(a)
        assert 24 - 2 * 2 * 2 < len(a) + len(b) <= 24  # 2 ranks x 2 workers x batch 2
    assert ranks[0]["train"][0] != ranks[0]["train"][1]  # reshuffled each epoch


def test_train_and_test_on_shards(shards, tmp_path):
    _, out = shards
    metrics = run_mode(
        [
            "data=shards",
            f"data.root={out}",
            "data.image_size=32",
            "data.batch_size=6",
            "backbone.width=0.25",
            "trainer.max_epochs=1",
            "task.log_images=0",
            "task.top_k=2",
        ],
        tmp_path / "run",
    )
    assert metrics["test/split"] == "test" and 0 <= metrics["test/acc_top1"] <= 1


def test_shards_write_cli(shards, tmp_path, capsys):
    from mbtasks.data import shards as shards_cli

    root, _ = shards
    proc = subprocess.run(
        [sys.executable, "-m", "mbtasks", "shards", "write", str(root), str(tmp_path / "s")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train: 24 samples (1 unreadable left out)" in proc.stdout
    assert shards_cli.main(["write", str(root), str(tmp_path / "s")]) == 2  # what the CLI exits with
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err
