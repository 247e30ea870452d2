"""Published ImageNet weights by name: where they are found, what a pretrained start changes, the
published classifier as a checkpoint. Every file here is generated (random weights in the real formats)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf

import mbtasks
from mbtasks.backbones.mobilenet_v1 import MobileNetV1
from mbtasks.backbones.mobilenet_v2 import MobileNetV2
from mbtasks.backbones.weights import TF_MEAN, TF_STD, Converted, published
from mbtasks.errors import ConfigError
from mbtasks.pretraining import class_names
from tests.conftest import run_mode


def tv_file(torch_home: Path) -> Path:
    """A torchvision ``mobilenet_v2`` state dict (random weights) under torchvision's published name."""
    path = torch_home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None)
    torch.save(net.state_dict(), path)
    return path


def converted_v1(width: float = 0.25, folded: bool = True) -> Converted:
    """A V1 as a converted TFLite file would hold it: relu6, TF padding, TF normalisation."""
    torch.manual_seed(1)
    backbone = MobileNetV1(width, act="relu6", padding="tf_same")
    layout = published.ClassifierLayout(backbone)
    return Converted(
        layout.state_dict(),
        "MobileNetV1",
        width,
        128,
        act="relu6",
        padding="tf_same",
        mean=TF_MEAN,
        std=TF_STD,
        bn_folded=folded,
        source="test",
    )


def test_unpublished_width_is_refused_with_the_published_ones():
    with pytest.raises(
        ConfigError, match=r"MobileNetV1\(width=0.3\); MobileNetV1 has them at widths 0.25, 0.5, 0.75, 1"
    ):
        published.entry_for("MobileNetV1", 0.3)
    with pytest.raises(ConfigError, match="widths 0.5, 1, 1.4"):
        published.parse_name("mobilenet_v2_0.75:imagenet")
    assert published.parse_name("runs/x/best.ckpt") is None
    assert published.parse_name("mobilenet_v1_0.5:imagenet").width == 0.5


def test_offline_without_the_file_names_what_to_place_and_the_command(no_published_weights):
    entry = published.parse_name("mobilenet_v1_0.5:imagenet")
    with pytest.raises(ConfigError) as err:
        published.locate(entry, online=False)
    message = str(err.value)
    assert "mobilenet_v1_0.5_160_quant.tflite" in message
    assert "python -m mbtasks weights convert FILE" in message
    assert str(no_published_weights / "mbtasks" / "mobilenet_v1_0.5-imagenet.pth") in message


def test_lookup_order_torchvision_first_then_our_cache(no_published_weights):
    entry = published.parse_name("mobilenet_v2_1.0:imagenet")
    assert published.find_local(entry) is None
    ours = published.cached_file(entry)
    torch.manual_seed(0)
    layout = published.ClassifierLayout(MobileNetV2(1.0))
    published.write_converted(Converted(layout.state_dict(), "MobileNetV2", 1.0, 224, source="test"), ours)
    assert published.find_local(entry).origin == "converted"
    tv = tv_file(no_published_weights / "torch")
    found = published.find_local(entry)
    assert (found.origin, found.path) == ("torchvision", tv)


def test_named_classifier_equals_torchvision_and_has_imagenet_classes(no_published_weights):
    tv_file(no_published_weights / "torch")
    model = mbtasks.load("mobilenet_v2_1.0:imagenet", device="cpu", fold_bn=False)
    assert model.task.class_names[:2] == ["tench", "goldfish"] and len(model.task.class_names) == 1000
    assert model.image_size == 224
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.task.model(x), reference(x), atol=1e-4)
    image = (np.random.default_rng(0).random((300, 200, 3)) * 255).astype(np.uint8)
    (result,) = model.predict(image)
    assert result.label in model.task.class_names and len(result.top_k) == 5
    # the checkpoint is written once, into our cache, and re-used
    path = no_published_weights / "mbtasks" / "mobilenet_v2_1.0-imagenet.ckpt"
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    mbtasks.load("mobilenet_v2_1.0:imagenet", device="cpu")
    assert path.stat().st_mtime_ns == stamp


def test_named_classifier_through_the_cli_predict(no_published_weights, tmp_path):
    published.write_converted(converted_v1(), no_published_weights / "mbtasks" / "mobilenet_v1_0.25-imagenet.pth")
    images = tmp_path / "photos"
    images.mkdir()
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)).save(images / "a.jpg")
    run_mode(["mode=predict", "ckpt_path=mobilenet_v1_0.25:imagenet", f"predict.input={images}"], tmp_path / "run")

    (row,) = json.loads((tmp_path / "run" / "predictions.json").read_text())["predictions"]
    assert row["label"] in class_names()


def test_named_classifier_refused_as_a_training_start(no_published_weights, tmp_path):
    with pytest.raises(ConfigError, match="backbone.pretrained=imagenet"):
        run_mode(["ckpt_path=mobilenet_v1_0.25:imagenet"], tmp_path)


@pytest.mark.slow
def test_auto_is_from_scratch_on_synthetic_data_or_without_weights(no_published_weights, tiny_shapes, tmp_path, caplog):
    common = [
        f"data.root={tiny_shapes}",
        "data.image_size=32",
        "backbone.width=0.25",
        "trainer.max_epochs=1",
        "data.batch_size=16",
    ]
    with caplog.at_level(logging.INFO, logger="mbtasks"):
        run_mode([*common, "data.generator=null"], tmp_path / "real")
    cfg = OmegaConf.load(tmp_path / "real" / "config.yaml")
    assert cfg.backbone.pretrained is None  # real data, but no weights on this machine
    assert cfg.optimizer.lr == 0.02  # the from-scratch recipe
    assert "training from scratch; ImageNet weights for mobilenet_v1_0.25 would fine-tune far better" in caplog.text
    published.write_converted(converted_v1(), no_published_weights / "mbtasks" / "mobilenet_v1_0.25-imagenet.pth")
    run_mode(common, tmp_path / "synthetic")  # data=synthetic_shapes: its generator makes it synthetic
    assert OmegaConf.load(tmp_path / "synthetic" / "config.yaml").backbone.pretrained is None


def test_auto_on_real_data_finetunes_the_published_weights(no_published_weights, tiny_shapes, tmp_path, caplog):
    converted = converted_v1()
    published.write_converted(converted, no_published_weights / "mbtasks" / "mobilenet_v1_0.25-imagenet.pth")
    with caplog.at_level(logging.INFO, logger="mbtasks"):
        # the group choices a real-data run gives (data=..., backbone=...) do not keep what the weights need
        run_mode(
            [
                "data=imagefolder",
                "backbone=mobilenet_v1",
                f"data.root={tiny_shapes}",
                "data.image_size=32",
                "backbone.width=0.25",
                "trainer.max_epochs=2",
                "data.batch_size=16",
                "finetune.lr_mult=0.5",
            ],
            tmp_path / "run",
        )
    cfg = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert cfg.backbone.pretrained == "imagenet"
    # what the weights need
    assert (cfg.backbone.act, cfg.backbone.padding) == ("relu6", "tf_same")
    assert list(cfg.data.mean) == list(TF_MEAN) and list(cfg.data.std) == list(TF_STD)
    assert cfg.finetune.unfold_bn is True  # folded BatchNorm first takes the data's statistics
    # the task's recipe, except the key given on the command line
    recipe = OmegaConf.load(Path(mbtasks.__file__).parent.parent / "conf" / "task" / "classification.yaml")
    assert cfg.optimizer.lr == recipe.finetune_recipe.optimizer.lr
    assert cfg.finetune.lr_mult == 0.5
    text = caplog.text
    assert "backbone.pretrained=auto: real data and mobilenet_v1_0.25 ImageNet weights" in text
    assert "fine-tuning recipe of task=classification" in text
    assert "BatchNorm layers took the statistics of 8 training batches" in text
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # the conv weights did train (epoch 1 trains the backbone after the head's warm-up epoch)
    w = ckpt["state_dict"]["model.backbone.blocks.3.conv_pw.0.weight"]
    assert not torch.equal(w, converted.state_dict["backbone.blocks.3.conv_pw.0.weight"])


def test_recipe_off_and_explicit_imagenet_without_weights(no_published_weights, tiny_shapes, tmp_path):
    with pytest.raises(ConfigError, match="no ImageNet weights for mobilenet_v1_0.25 on this machine"):
        run_mode([f"data.root={tiny_shapes}", "backbone.width=0.25", "backbone.pretrained=imagenet"], tmp_path / "a")
    published.write_converted(converted_v1(), no_published_weights / "mbtasks" / "mobilenet_v1_0.25-imagenet.pth")
    run_mode(
        [
            f"data.root={tiny_shapes}",
            "data.image_size=32",
            "backbone.width=0.25",
            "backbone.pretrained=imagenet",
            "finetune_recipe=null",
            "trainer.max_epochs=1",
            "data.batch_size=16",
        ],
        tmp_path / "b",
    )
    cfg = OmegaConf.load(tmp_path / "b" / "config.yaml")
    assert cfg.optimizer.lr == 0.02 and cfg.finetune.freeze is False
    assert cfg.backbone.act == "relu6"  # what the weights need still applies


@pytest.mark.slow
def test_weights_cli_converts_a_torchvision_file_into_the_cache(no_published_weights, tmp_path):
    src = tv_file(tmp_path / "elsewhere")
    out = subprocess.run(
        [sys.executable, "-m", "mbtasks", "weights", "convert", str(src)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    cached = no_published_weights / "mbtasks" / "mobilenet_v2_1.0-imagenet.pth"
    assert str(cached) in out.stdout
    converted = published.read_converted(cached)
    assert (converted.arch, converted.width, converted.padding) == ("MobileNetV2", 1.0, "symmetric")
    listing = subprocess.run(
        [sys.executable, "-m", "mbtasks", "weights", "list"], capture_output=True, text=True, timeout=120
    )
    row = next(line for line in listing.stdout.splitlines() if line.startswith("mobilenet_v2_1.0:imagenet"))
    assert row.split() == ["mobilenet_v2_1.0:imagenet", "converted", str(cached)]
    bad = subprocess.run(
        [sys.executable, "-m", "mbtasks", "weights", "convert", str(tmp_path / "x.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr and "x.onnx" in bad.stderr


def test_recipe_applies_to_any_pretrained_start_and_skips_the_frozen_warmup_under_ddp(tmp_path):
    from mbtasks.pretraining import prepare
    from tests.conftest import compose_cfg

    source = str(tmp_path / "classification-run.ckpt")  # transfer chains: another task's checkpoint
    overrides = ["task=detection", f"backbone.pretrained={source}", "optimizer.lr=0.005"]
    cfg = prepare(compose_cfg(overrides), overrides)
    assert cfg.optimizer.lr == 0.005  # given on the command line
    assert cfg.finetune.lr_mult == cfg.finetune_recipe.finetune.lr_mult
    overrides = [f"backbone.pretrained={source}", "trainer=ddp"]
    cfg = prepare(compose_cfg(overrides), overrides)
    assert cfg.finetune.freeze is False and cfg.finetune.unfreeze_at_epoch is None
    assert cfg.finetune.unfreeze_at_share is None
    assert cfg.optimizer.lr == cfg.finetune_recipe.optimizer.lr
    overrides = [f"backbone.pretrained={source}", "optimizer=sgd"]
    cfg = prepare(compose_cfg(overrides), overrides)
    assert cfg.optimizer.lr == compose_cfg(["optimizer=sgd"]).optimizer.lr  # the recipe's LR was for AdamW


def test_recipe_augment_replaces_the_train_pipeline_unless_one_is_chosen(tmp_path):
    from mbtasks.pretraining import prepare
    from tests.conftest import compose_cfg

    source = f"backbone.pretrained={tmp_path / 'run.ckpt'}"

    def pipeline(*extra: str, recipe: str = "finetune_recipe.augment=light") -> list[str]:
        overrides = ["task=detection", "data=voc", "data.root=/nowhere", source, *extra]
        cfg = prepare(compose_cfg([*overrides, recipe]), overrides)
        ops = [t["_target_"].rsplit(".", 1)[-1] for t in cfg.data.train_transforms.transforms]
        assert cfg.data.train_transforms.bbox_params.format == "pascal_voc"  # boxes still follow
        return ops

    mild = pipeline(recipe="finetune_recipe.augment=null")
    assert mild == ["Resize", "HorizontalFlip", "Affine", "ColorJitter"]  # data=voc's own pipeline
    assert pipeline() == ["Resize", "HorizontalFlip"]  # the recipe's augment=light
    assert pipeline("augment=ssd") == pipeline("augment=ssd", recipe="finetune_recipe.augment=null")
    assert pipeline("data.train_transforms._target_=albumentations.Compose") == mild
    # from scratch the recipe does not apply
    overrides = ["task=detection", "data=voc", "data.root=/nowhere", "backbone.pretrained=null"]
    cfg = prepare(compose_cfg([*overrides, "finetune_recipe.augment=light"]), overrides)
    assert len(cfg.data.train_transforms.transforms) == len(mild)
    with pytest.raises(ConfigError, match="finetune_recipe.augment=nosuch"):
        pipeline(recipe="finetune_recipe.augment=nosuch")


def test_unfold_batchnorm_keeps_the_function_and_takes_the_data_statistics():
    from mbtasks.callbacks.backbone_freeze import unfold_batchnorm

    torch.manual_seed(0)
    backbone = MobileNetV1(0.25, act="relu6")
    for m in backbone.modules():  # folded weights: identity BatchNorm with a shift
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.zero_()
            m.running_var.fill_(1 - m.eps)
            m.weight.data.fill_(1.0)
            m.bias.data.normal_(0, 0.1)
    batches = [torch.randn(8, 3, 64, 64) * 2 + 1 for _ in range(3)]
    x = torch.cat(batches)
    backbone.eval()
    with torch.no_grad():
        before = backbone(x)[-1]
    assert unfold_batchnorm(backbone, batches) == len(
        [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    )
    with torch.no_grad():
        after = backbone(x)[-1]
        assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)  # same function in eval mode
        backbone.train()
        trained = backbone(x)[-1]  # batch statistics now agree with the running ones
    assert (trained - after).abs().mean() < 0.05 * after.abs().mean()
    stem_bn = backbone.stem[1]
    assert stem_bn.running_var.mean() > 1.5  # the stem's outputs on these inputs, not the identity's 1


def test_named_classifier_exports_to_int8_and_profiles(no_published_weights, tmp_path):
    """Export (INT8 scored on a folder of the ImageNet class names) and profile a published classifier."""
    from PIL import Image

    published.write_converted(converted_v1(), no_published_weights / "mbtasks" / "mobilenet_v1_0.25-imagenet.pth")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("tench", "goldfish"):  # any subset of the 1000 classes, by name
            folder = tmp_path / "imagenet" / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray((rng.random((100, 140, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.jpg")
    model = mbtasks.load("mobilenet_v1_0.25:imagenet", device="cpu")
    profile = model.profile(repeats=2, warmup=1)
    assert profile["image_size"] == 128 and profile["params"] > 400_000
    out = tmp_path / "v1.onnx"
    model.export(
        "onnx",
        out,
        [
            f"data.root={tmp_path / 'imagenet'}",
            "export.quantize=int8",
            "export.calibration_images=8",
            "export.int8_max_drop_top1=1",
            "export.speed_batch=2",
        ],
    )
    assert out.is_file()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["quantization"]["type"] == "int8"
    assert meta["verification"]["int8"]["split"] == "val" and meta["verification"]["int8"]["metric"] == "top1"
    assert len(meta["class_names"]) == 1000
