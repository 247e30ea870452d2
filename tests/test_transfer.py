"""Transfer learning: backbone.pretrained from checkpoints / state dicts, freezing, LR multiplier."""

from __future__ import annotations

import shutil

import pytest
import timm
import torch
import torchvision

from mbtasks.backbones.mobilenet_v1 import MobileNetV1
from mbtasks.backbones.mobilenet_v2 import MobileNetV2
from mbtasks.backbones.pretrained import load_pretrained
from mbtasks.callbacks.backbone_freeze import BackboneFreeze
from mbtasks.callbacks.time_budget import TimeBudget
from mbtasks.checkpoint import read as read_checkpoint
from mbtasks.errors import ConfigError
from mbtasks.tasks import build_task, load_task
from mbtasks.tasks.finetune import FineTune
from tests.conftest import compose_cfg, run_mode

CLASSES = ["circle", "square", "triangle"]


def backbone_tensors(state_dict: dict) -> dict[str, torch.Tensor]:
    prefix = "model.backbone."
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def detection(root, run_extra=()) -> list[str]:
    return [
        "task=detection",
        f"data.root={root}",
        "data.image_size=64",
        "data.batch_size=4",
        f"data.generator.classes=[{','.join(CLASSES)}]",
        "data.generator.train_images=8",
        "data.generator.val_images=4",
        "data.generator.test_images=4",
        "data.generator.image_size=64",
        "backbone.width=0.25",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "task.log_images=0",
        *run_extra,
    ]


@pytest.fixture(scope="module")
def source_ckpt(tiny_run):
    """A classification run (V1 width 0.25, 32 px shapes): the backbone every test transfers."""
    return tiny_run[1] / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def det_root(tmp_path_factory):
    return tmp_path_factory.mktemp("det") / "shapes"


def test_classification_to_frozen_detection(source_ckpt, det_root, tmp_path):
    source = backbone_tensors(read_checkpoint(source_ckpt)["state_dict"])
    # a copy as the source, deleted before re-loading: test/predict must never re-read it
    copy = tmp_path / "source.ckpt"
    shutil.copy(source_ckpt, copy)
    run_dir = tmp_path / "det"
    # the documented recipe: frozen for the first epochs (this run has one), BN in eval
    run_mode(detection(det_root, ["experiment=transfer_cls_to_det", f"backbone.pretrained={copy}"]), run_dir)
    trained = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    after = backbone_tensors(trained["state_dict"])
    assert set(after) == set(source) and len(after) > 50
    # frozen: weights and BatchNorm running statistics are exactly the source's after training
    for k, v in source.items():
        assert torch.equal(after[k], v), k
    assert trained["global_step"] == 2
    copy.unlink()
    task, cfg = load_task(run_dir / "checkpoints" / "last.ckpt")
    assert cfg.backbone.pretrained is None
    assert torch.equal(task.model.backbone.stem[0].weight, source["stem.0.weight"])


def test_loaded_tensors_equal_source_and_report(source_ckpt, caplog):
    source = backbone_tensors(read_checkpoint(source_ckpt)["state_dict"])
    cfg = compose_cfg(
        ["task=detection", "backbone.width=0.25", f"backbone.pretrained={source_ckpt}", "data.image_size=64"]
    )
    with caplog.at_level("INFO"):
        task = build_task(cfg, {"class_names": CLASSES, "image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3})
    report = task.model.backbone.pretrained_report  # the backbone loaded it (backbone.pretrained)
    assert report.kind == "mbtasks classification checkpoint"
    assert len(report.loaded) == len(source) and report.missing == [] and report.unexpected == []
    for k, v in task.model.backbone.state_dict().items():
        assert torch.equal(v, source[k]), k
    assert f"loaded {len(source)} tensors, missing 0, unexpected 0" in caplog.text


def test_unfreeze_at_epoch_with_lower_lr(source_ckpt, det_root, tmp_path):
    run_dir = tmp_path / "det"
    run_mode(
        detection(
            det_root,
            [
                f"backbone.pretrained={source_ckpt}",
                "finetune.freeze=true",
                "finetune.unfreeze_at_epoch=1",
                "finetune.lr_mult=0.1",
                "trainer.max_epochs=2",
                "scheduler=constant",
            ],
        ),
        run_dir,
    )
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    source = backbone_tensors(read_checkpoint(source_ckpt)["state_dict"])
    after = backbone_tensors(ckpt["state_dict"])
    assert not torch.equal(after["stem.0.weight"], source["stem.0.weight"])  # trained in epoch 1
    groups = {g["name"]: g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]}
    assert groups["backbone"] == pytest.approx(0.1 * groups["head"])


def test_freeze_without_pretrained_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="finetune.freeze=true with backbone.pretrained=null would freeze random"):
        run_mode(["experiment=transfer_cls_to_det"], tmp_path)


def test_freeze_callback_keeps_batchnorm_in_eval():
    backbone = MobileNetV1(0.25)

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone

    class Trainer:
        current_epoch = global_step = 0

    module, trainer = Module(), Trainer()
    callback = BackboneFreeze(FineTune(freeze=True, unfreeze_at_epoch=2))
    callback.on_fit_start(trainer, module)
    module.train()  # what Lightning does after validation
    callback.on_train_batch_start(trainer, module, None, 0)
    assert all(not m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    trainer.current_epoch = 2
    callback.on_train_epoch_start(trainer, module)
    assert all(m.training for m in backbone.modules()) and all(p.requires_grad for p in backbone.parameters())


def test_unfreeze_at_a_share_of_the_planned_steps():
    """A large set's first epoch can be most of a budget: the backbone trains from 10% of the plan on."""

    class Trainer:
        current_epoch, global_step, estimated_stepping_batches, callbacks = 0, 0, 100, []

    module = torch.nn.Module()
    module.backbone = MobileNetV1(0.25)
    callback, trainer = BackboneFreeze(FineTune(freeze=True, unfreeze_at_epoch=1, unfreeze_at_share=0.1)), Trainer()
    callback.on_fit_start(trainer, module)
    trainer.global_step = 9
    callback.on_train_batch_start(trainer, module, None, 9)
    assert not any(p.requires_grad for p in module.backbone.parameters())
    trainer.global_step = 10  # still epoch 0
    callback.on_train_batch_start(trainer, module, None, 10)
    assert all(p.requires_grad for p in module.backbone.parameters()) and module.backbone.training
    # under train.time the plan decides; before the first plan the share is not known: still frozen
    budget = TimeBudget(time="1m")
    trainer.callbacks, trainer.global_step = [budget], 30
    callback.on_fit_start(trainer, module)
    assert not any(p.requires_grad for p in module.backbone.parameters())
    budget.total_steps = 400
    callback.on_train_batch_start(trainer, module, None, 30)
    assert not any(p.requires_grad for p in module.backbone.parameters())
    budget.total_steps = 300  # a plan that shrinks brings the share forward
    callback.on_train_batch_start(trainer, module, None, 30)
    assert all(p.requires_grad for p in module.backbone.parameters())
    with pytest.raises(ConfigError, match="finetune.unfreeze_at_share=1.5"):
        FineTune(freeze=True, unfreeze_at_share=1.5)


def test_lr_mult_makes_backbone_group():
    cfg = compose_cfg(["backbone.width=0.25", "finetune.lr_mult=0.25", "optimizer.lr=0.2"])
    task = build_task(cfg, {"class_names": CLASSES, "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    optimizer = task.optimizer_factory(task.parameter_groups())
    groups = {g["name"]: g for g in task.parameter_groups()}
    assert len(groups["backbone"]["params"]) == len(list(task.model.backbone.parameters()))
    assert len(groups["head"]["params"]) == 2
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_mult", 1.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.05])


def test_refuses_width_and_architecture_mismatch(source_ckpt):
    with pytest.raises(ConfigError, match=r"MobileNetV1\(width=0.25\).*MobileNetV1\(width=0.5\)"):
        load_pretrained(MobileNetV1(0.5, out_indices=(3, 4)), str(source_ckpt))
    with pytest.raises(ConfigError, match=r"MobileNetV1\(width=0.25\).*MobileNetV2\(width=0.25\)"):
        load_pretrained(MobileNetV2(0.25), str(source_ckpt))
    with pytest.raises(ConfigError, match="file not found"):
        load_pretrained(MobileNetV1(0.25), "/nope/missing.ckpt")


def test_plain_state_dict_with_prefix(tmp_path):
    src = MobileNetV1(0.25)
    path = tmp_path / "plain.pth"
    torch.save(
        {f"backbone.{k}": v for k, v in src.state_dict().items()} | {"head.fc.weight": torch.zeros(3, 256)}, path
    )
    dst = MobileNetV1(0.25, out_indices=(3, 4))
    report = load_pretrained(dst, str(path))
    assert report.kind == "state dict" and report.unexpected == [] and report.missing == []
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())
    with pytest.raises(ConfigError, match="none of its 3 tensors"):  # another network's: counted, not 0
        torch.save({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, path)
        load_pretrained(dst, str(path))


def test_timm_and_torchvision_state_dicts(tmp_path):
    torch.manual_seed(0)
    timm_v1 = timm.create_model("mobilenetv1_100", pretrained=False).eval()
    torch.save(timm_v1.state_dict(), tmp_path / "timm_v1.pth")
    ours = MobileNetV1(1.0, out_indices=(3, 4), act="relu6").eval()
    report = load_pretrained(ours, str(tmp_path / "timm_v1.pth"))
    assert report.kind == "timm MobileNet state dict" and len(report.loaded) == len(ours.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x)[-1] - timm_v1.forward_features(x)).abs().max() < 1e-4
    tv_v2 = torchvision.models.mobilenet_v2(weights=None)
    torch.save(tv_v2.state_dict(), tmp_path / "tv_v2.pth")
    v2 = MobileNetV2(1.0, out_indices=(3, 4), expansion_taps=True)
    assert load_pretrained(v2, str(tmp_path / "tv_v2.pth")).kind == "torchvision MobileNet state dict"
    assert torch.equal(v2.stem[0].weight, tv_v2.features[0][0].weight)
    with pytest.raises(ConfigError, match=r"MobileNetV1\(width=0.5\)"):
        load_pretrained(MobileNetV1(0.5), str(tmp_path / "timm_v1.pth"))


def test_timm_offline_fails_clearly(monkeypatch, tmp_path):
    import huggingface_hub.constants

    import mbtasks.backbones.pretrained as pretrained

    monkeypatch.setattr(pretrained, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="backbone.pretrained=timm.*mobilenetv1_100.*no internet"):
        load_pretrained(MobileNetV1(1.0), "timm")
    with pytest.raises(ConfigError, match="timm publishes no weights for MobileNetV1\\(width=0.25\\)"):
        load_pretrained(MobileNetV1(0.25), "timm")
    # timm.yaml's own meaning (timm downloads for a TimmBackbone) fails the same way offline
    cfg = compose_cfg(["backbone=timm", "backbone.name=mobilenetv3_small_050", "backbone.pretrained=timm"])
    with pytest.raises(ConfigError, match="no internet"):
        build_task(cfg, {"class_names": CLASSES, "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})


def test_unfreeze_refused_under_ddp():
    callback = BackboneFreeze(FineTune(freeze=True, unfreeze_at_epoch=1))

    class Trainer:
        world_size, current_epoch, global_step = 2, 0, 0

    module = torch.nn.Module()
    module.backbone = MobileNetV1(0.25)
    with pytest.raises(ConfigError, match="finetune.unfreeze_at_epoch=1 needs a single-process run"):
        callback.on_fit_start(Trainer(), module)
    with pytest.raises(ConfigError, match="finetune.unfreeze_at_share=0.1 needs a single-process run"):
        BackboneFreeze(FineTune(freeze=True, unfreeze_at_share=0.1)).on_fit_start(Trainer(), module)
    BackboneFreeze(FineTune(freeze=True)).on_fit_start(Trainer(), module)  # frozen throughout: fine
    assert not any(p.requires_grad for p in module.backbone.parameters())
