"""MobileFaceNet (arXiv:1804.07573): the paper's size and cost, its structure (Table 1), the GDConv
embedding head at any input size, and a tiny training run through the CLI."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from hydra.errors import InstantiationException

from mbtasks.backbones.blocks import InvertedResidual, PReLU
from mbtasks.backbones.mobilefacenet import MobileFaceNet
from mbtasks.errors import ConfigError
from mbtasks.export.formats import load_runner
from mbtasks.models.embedding import (
    EmbeddingHead,
    EmbeddingNet,
    GlobalDepthwiseConv,
    build_embedding_head,
)
from mbtasks.tasks import build_task, load_task
from tests.conftest import compose_cfg, run_mode

INFO = {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "num_train_identities": 6}


def embedder(size: int, width: float = 1.0, **head) -> EmbeddingNet:
    backbone = MobileFaceNet(width)
    return EmbeddingNet(backbone, build_embedding_head(functools.partial(EmbeddingHead, **head), backbone, size))


def test_profile_matches_the_paper(tmp_path):
    """Table 2 of the paper: 0.99M parameters, 221M mult-adds at 112x112, a 128-d embedding."""
    out = run_mode(
        [
            "mode=profile",
            "task=embedding",
            "backbone=mobilefacenet",
            "data.image_size=112",
            "profile.repeats=1",
            "profile.warmup=0",
        ],
        tmp_path,
    )
    assert json.loads((tmp_path / "profile.json").read_text()) == out
    assert out["backbone"] == "MobileFaceNet"
    # the paper counts the deployed network, BatchNorm folded into biases (0.993M); training holds
    # each BatchNorm's scale and shift (1.003M)
    assert round(out["params_bn_folded"] / 1e6, 2) == 0.99
    assert out["params"] == pytest.approx(1.003e6, rel=0.002)
    assert round(out["mult_adds"] / 1e6) == 221


def test_structure_is_table_1():
    net = embedder(112).eval()
    backbone = net.backbone
    bottlenecks = [b for b in backbone.blocks if isinstance(b, InvertedResidual)]
    assert len(bottlenecks) == 5 + 1 + 6 + 1 + 2
    expansions = [b.hidden_channels // b.conv_expand[0].in_channels for b in bottlenecks]
    assert expansions == [2] * 5 + [4] + [2] * 6 + [4] + [2] * 2
    assert [i for i, b in enumerate(bottlenecks) if b.stride == 2] == [0, 5, 12]
    assert sum(b.use_residual for b in bottlenecks) == 12  # every block but the three that change shape
    assert backbone.out_channels == [512] and backbone.strides == [16]
    assert all(isinstance(m, PReLU) for m in net.modules() if isinstance(m, torch.nn.PReLU))
    assert not any(isinstance(m, torch.nn.ReLU | torch.nn.ReLU6) for m in net.modules())
    # the head: a linear 7x7 global depthwise conv (no activation), then a linear 128-d projection
    gdc = net.head.pool
    assert isinstance(gdc, GlobalDepthwiseConv) and gdc[0].kernel_size == (7, 7) and gdc[0].groups == 512
    assert net(torch.randn(2, 3, 112, 112)).shape == (2, 128)


@pytest.mark.parametrize(("size", "side"), [(32, 2), (64, 4), (100, 7), (112, 7), (128, 8)])
def test_gdconv_kernel_is_the_final_map_at_the_image_size(size, side):
    net = embedder(size, width=0.25)
    assert net.head.pool.feature_size == side
    assert net.backbone(torch.randn(1, 3, size, size))[-1].shape[-2:] == (side, side)
    emb = net(torch.randn(2, 3, size, size))
    assert emb.shape == (2, 128) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_gdconv_refuses_other_sizes_and_too_small_images():
    net = embedder(112, width=0.25)
    with pytest.raises(ValueError, match="built for 7x7 feature maps.*got \\(6, 6\\)"):
        net(torch.randn(2, 3, 96, 96))
    with pytest.raises(ConfigError, match="data.image_size=8: .*at least the backbone's total stride, 16"):
        embedder(8)


def test_head_pool_choices():
    # auto: MobileFaceNet's GDConv, average pooling for the other backbones; both can be forced
    assert isinstance(embedder(64, pool="avg").head.pool, torch.nn.AdaptiveAvgPool2d)
    v1 = build_task(
        compose_cfg(["task=embedding", "backbone.width=0.25", "data.image_size=64"]), {**INFO, "image_size": 64}
    )
    assert isinstance(v1.model.head.pool, torch.nn.AdaptiveAvgPool2d)
    v1_gdc = build_task(
        compose_cfg(["task=embedding", "backbone.width=0.25", "data.image_size=64", "head.pool=gdc"]),
        {**INFO, "image_size": 64},
    )
    assert isinstance(v1_gdc.model.head.pool, GlobalDepthwiseConv) and v1_gdc.model.head.pool.feature_size == 2
    with pytest.raises((ConfigError, InstantiationException), match="head.pool='gcd'.*Did you mean 'gdc'"):
        build_task(
            compose_cfg(["task=embedding", "backbone=mobilefacenet", "data.image_size=32", "head.pool=gcd"]), INFO
        )
    with pytest.raises(ConfigError, match="backbone.act='prelu6'.*Did you mean"):
        MobileFaceNet(act="prelu6")


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_backbone_contract_all_levels(width):
    net = MobileFaceNet(width, out_indices=(0, 1, 2, 3)).eval()
    feats = net(torch.randn(2, 3, 96, 64))
    assert net.strides == [2, 4, 8, 16]
    assert [f.shape[1] for f in feats] == net.out_channels
    assert net.out_channels[-1] == (512 if width == 1.0 else 256)
    for f, s in zip(feats, net.strides, strict=True):
        assert f.shape[2:] == (96 // s, 64 // s)
    with pytest.raises(ValueError, match="level 4 out of range; valid levels are 0..3"):
        MobileFaceNet(out_indices=(4,))


def test_cli_trains_two_steps_and_the_checkpoint_rebuilds(tmp_path):
    """backbone=mobilefacenet through the real CLI on tiny synthetic faces (32 px: a 2x2 GDConv)."""
    from mbtasks.data.synthetic.faces import make_synthetic_faces

    gen = {"num_identities": 12, "images_per_identity": 4, "image_size": 32, "seed": 0}
    make_synthetic_faces(tmp_path / "data" / "synthetic_faces", **gen)
    overrides = [
        "task=embedding",
        "backbone=mobilefacenet",
        "backbone.width=0.25",
        f"data_dir={tmp_path / 'data'}",
        "data.image_size=32",
        *(f"data.generator.{k}={v}" for k, v in gen.items()),
        "data.val_identities=3",
        "data.test_identities=3",
        "data.identities_per_batch=3",
        "data.images_per_identity=2",
        "data.num_folds=2",
        "data.pairs_per_fold=6",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "task.projector_identities=0",
    ]
    run_dir = tmp_path / "train"
    metrics = run_mode(overrides, run_dir)
    assert 0.0 <= metrics["test/verification_acc"] <= 1.0 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    task, cfg = load_task(run_dir / "checkpoints" / "best.ckpt")
    assert cfg.backbone._target_.endswith("MobileFaceNet") and task.model.head.pool.feature_size == 2
    x = torch.randn(3, 3, 32, 32)
    again, _ = load_task(run_dir / "checkpoints" / "best.ckpt")
    assert torch.allclose(task.embed(x), again.embed(x))
    # the GDConv head exports (its size check stays out of the exported graph) and matches predict
    out = run_mode(
        [
            "mode=export",
            f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
            "export.format=onnx",
            "export.end_to_end=false",
        ],
        tmp_path / "onnx",
    )
    assert set(out["max_abs_diff"]) == {"embeddings"}
    (got,) = load_runner("onnx", tmp_path / "onnx" / "embedding.onnx")(x.numpy())
    assert abs(got - task.embed(x).numpy()).max() < 1e-4
