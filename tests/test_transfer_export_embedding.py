"""The embedding chain: a classification backbone starts an embedding run (frozen), which exports
to ONNX / TorchScript with its flip-TTA embedding and verification threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mbtasks.checkpoint import read as read_checkpoint
from mbtasks.export.formats import load_runner
from mbtasks.tasks import load_task
from tests.conftest import run_mode

GEN = {"num_identities": 12, "images_per_identity": 4, "image_size": 32, "seed": 0}


def backbone_tensors(state_dict: dict) -> dict[str, torch.Tensor]:
    return {k[len("model.backbone.") :]: v for k, v in state_dict.items() if k.startswith("model.backbone.")}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_run):
    base = tmp_path_factory.mktemp("chain")
    source = tiny_run[1] / "checkpoints" / "last.ckpt"
    run_mode(
        [
            "experiment=transfer_cls_to_emb",
            f"backbone.pretrained={source}",
            "backbone.width=0.25",
            f"data_dir={base / 'data'}",
            "data.image_size=32",
            *(f"data.generator.{k}={v}" for k, v in GEN.items()),
            "data.val_identities=3",
            "data.test_identities=3",
            "data.identities_per_batch=4",
            "data.images_per_identity=2",
            "data.num_folds=2",
            "data.pairs_per_fold=8",
            "trainer.max_epochs=1",
            "task.projector_identities=0",
        ],
        base / "emb",
    )
    return source, base / "emb" / "checkpoints" / "last.ckpt"


def test_classification_backbone_starts_frozen_embedding_run(chain):
    source, emb = chain
    before = backbone_tensors(read_checkpoint(source)["state_dict"])
    after = backbone_tensors(read_checkpoint(emb)["state_dict"])
    assert set(before) == set(after)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    head_keys = [k for k in read_checkpoint(emb)["state_dict"] if k.startswith("model.head.")]
    assert head_keys  # a new head was trained on top


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_embedding_export_verified(chain, tmp_path, fmt, suffix):
    _, emb = chain
    out = run_mode(["mode=export", f"ckpt_path={emb}", f"export.format={fmt}", "export.end_to_end=false"], tmp_path)
    assert set(out["max_abs_diff"]) == {"embeddings"} and out["inputs"].startswith("4 images")
    meta = json.loads((tmp_path / "embedding.json").read_text())
    task, _ = load_task(emb)
    assert meta["task"] == "embedding" and meta["flip_tta"] == task.flip_tta
    assert meta["thresholds"]["verification"] == pytest.approx(float(task.threshold))
    x = torch.randn(3, 3, 32, 32)
    (got,) = load_runner(fmt, tmp_path / f"embedding{suffix}")(x.numpy())
    expected = task.embed(x).numpy()
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
