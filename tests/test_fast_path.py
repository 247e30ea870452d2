"""The CPU fast path: channels_last + bf16 for training (callback) and predict (predict.* keys)."""

from __future__ import annotations

import json

import pytest
import torch

from mbtasks.callbacks import ChannelsLast
from mbtasks.errors import ConfigError
from tests.conftest import is_fraction_of, run_mode, train_tiny

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def trained_fast(tmp_path_factory):
    """Trained with the fast path itself: NHWC module and bf16 autocast."""
    root, run_dir, metrics = train_tiny(
        tmp_path_factory, "trainer.precision=bf16-mixed", "callbacks.channels_last.enabled=true"
    )
    return root, run_dir / "checkpoints" / "last.ckpt", metrics


def test_channels_last_callback_converts_module():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    ChannelsLast(enabled=True).setup(None, model, "fit")
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    y = model(torch.randn(2, 3, 16, 16))  # an NCHW batch comes out NHWC: the first conv converts it
    assert y.is_contiguous(memory_format=torch.channels_last)
    plain = torch.nn.Conv2d(3, 8, 3)
    ChannelsLast(enabled=False).setup(None, plain, "fit")
    assert not plain.weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_channels_last_training_runs(trained_fast):
    root, ckpt, metrics = trained_fast
    assert is_fraction_of(metrics["test/acc_top1"], len(list((root / "test").rglob("*.png"))))
    # trained in NHWC with bf16 autocast, the checkpoint holds plain float32 tensors that reload
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float32 for k, v in state.items() if v.is_floating_point())


def test_fast_predict_matches_fp32(trained_fast, tmp_path):
    root, ckpt, _ = trained_fast
    base = ["mode=predict", f"ckpt_path={ckpt}", f"predict.input={root / 'test'}"]
    plain = run_mode(base + ["predict.fold_bn=false"], tmp_path / "fp32")
    fast = run_mode(base + ["predict.channels_last=true", "predict.precision=bf16"], tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "predictions.json").read_text()) == fast
    folded = run_mode(base, tmp_path / "folded")  # the default: BatchNorm folded into the convs
    assert len(fast["predictions"]) == len(plain["predictions"]) == 6
    for p, f in zip(plain["predictions"], folded["predictions"], strict=True):
        assert p["label"] == f["label"] and abs(p["score"] - f["score"]) < 1e-4
    for p, f in zip(plain["predictions"], fast["predictions"], strict=True):
        assert isinstance(f["score"], float)
        assert abs(p["score"] - f["score"]) < 0.05  # bf16 keeps 8 bits of mantissa
    with pytest.raises(ConfigError, match="predict.precision='16'"):
        run_mode(base + ["predict.precision=16"], tmp_path / "bad")


def test_fold_batchnorm_keeps_outputs():
    from mbtasks.backbones.mobilenet_v2 import MobileNetV2
    from mbtasks.bn_folding import fold_batchnorm

    torch.manual_seed(0)
    net = MobileNetV2(0.25, out_indices=(3, 4), expansion_taps=True)
    for m in net.modules():  # non-trivial statistics, so a wrong fold would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(net)
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
        assert fold_batchnorm(net) == n_bn > 0
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
        for a, b in zip(before, net(x), strict=True):
            assert (a - b).abs().max() < 1e-4
