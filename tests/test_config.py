"""Every config group composes and instantiates; config mistakes fail at start-up with the key named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from mbtasks.config import CONFIG_DIR, misspelled_keys
from mbtasks.errors import ConfigError
from mbtasks.modes.run import RUNNERS, dispatch, runner
from mbtasks.tasks.finetune import FineTune
from tests.conftest import compose_cfg, save_checkpoint

CONF = Path(CONFIG_DIR)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("backbone"))
def test_backbones_instantiate(name):
    overrides = [f"backbone={name}"]
    if name == "timm":
        overrides.append("backbone.name=mobilenetv3_small_100")
    backbone = instantiate(compose_cfg(overrides).backbone)  # one constructor: pretrained is its argument
    assert backbone.pretrained_report is None  # backbone.pretrained=null loads nothing
    assert backbone.out_channels and backbone.strides


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizers_instantiate(name):
    import torch

    opt = instantiate(compose_cfg([f"optimizer={name}"]).optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.Optimizer)


def test_finetune_group_is_its_constructor():
    ft = instantiate(
        compose_cfg(["finetune.freeze=true", "finetune.unfreeze_at_epoch=2", "finetune.lr_mult=0.1"]).finetune
    )
    assert ft == FineTune(freeze=True, unfreeze_at_epoch=2, lr_mult=0.1)
    assert ft.frozen_at(1) and not ft.frozen_at(2)
    shared = FineTune(freeze=True, unfreeze_at_epoch=2, unfreeze_at_share=0.25)
    assert shared.frozen_at(0, 24, 100) and not shared.frozen_at(0, 25, 100) and shared.frozen_at(1, 99, None)
    with pytest.raises(ConfigError, match="finetune.unfreeze_at_epoch=-1"):
        FineTune(freeze=True, unfreeze_at_epoch=-1)


def test_detections_are_shown_from_one_score():
    """predict.score_threshold's default is the score the plots and the health checks show from."""
    from mbtasks.tasks.detection.results import SHOWN_SCORE

    assert compose_cfg(["task=detection"]).predict.score_threshold == SHOWN_SCORE


def test_modes_are_listed_once():
    """The modes dispatch runs are the ones it accepts: config.py keeps no second list (issue 27)."""
    import mbtasks.config

    assert not hasattr(mbtasks.config, "MODES")
    assert {m: runner(m) for m in RUNNERS} == RUNNERS
    with pytest.raises(ConfigError, match=r"mode='profil': expected one of \['train', .*Did you mean 'profile'"):
        runner("profil")


def test_no_decay_groups_exempt_depthwise_norm_and_bias():
    """task.no_decay: depthwise filters (MobileNet V1 Sec. 3.4), BatchNorm and biases get weight_decay 0."""
    import torch

    from mbtasks.tasks import build_task
    from mbtasks.tasks.optim import split_no_decay

    cfg = compose_cfg(["backbone.width=0.25"])
    assert list(cfg.task.no_decay) == ["norm", "bias", "depthwise"]
    task = build_task(cfg, {"class_names": ["a", "b"], "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    # what configure_optimizers builds (it needs a trainer for the schedule's length)
    opt = task.optimizer_factory(split_no_decay(task, task.parameter_groups(), task.no_decay))
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for module in task.modules():
        for name, p in module.named_parameters(recurse=False):
            depthwise = isinstance(module, torch.nn.Conv2d) and module.groups == module.in_channels > 1
            exempt = isinstance(module, torch.nn.BatchNorm2d) or name == "bias" or depthwise
            assert (id(p) in decay) != exempt, (type(module).__name__, name)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(task.parameters()))
    assert {g["name"] for g in opt.param_groups} == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert next(g for g in opt.param_groups if g["name"] == "backbone")["weight_decay"] == cfg.optimizer.weight_decay


@pytest.mark.parametrize("name", options("scheduler"))
def test_schedulers_instantiate_and_step(name):
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = instantiate(compose_cfg([f"scheduler={name}"]).scheduler)(opt, total_steps=100, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(0 < lr <= 1.0 for lr in lrs)
    if name == "cosine":
        assert lrs[0] < lrs[10] and lrs[-1] < 0.05  # warm-up, then decay
    if name == "step":
        assert lrs[19] == 1.0 and lrs[20] == pytest.approx(0.94)


@pytest.mark.parametrize("name", options("trainer"))
def test_trainers_compose(name):
    cfg = compose_cfg([f"trainer={name}"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if name != "gpu":  # gpu needs a CUDA device
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs >= 1


@pytest.mark.parametrize("name", options("data"))
def test_data_groups_compose(name, tmp_path):
    # face_paste has no root: its folders are data.faces and data.backgrounds
    where = (
        [f"data.faces={tmp_path}", f"data.backgrounds=[{tmp_path}]"]
        if name == "face_paste"
        else [f"data.root={tmp_path}"]
    )
    cfg = compose_cfg([f"data={name}", *where])
    assert cfg.data._target_ and cfg.data.image_size % 32 == 0
    OmegaConf.to_container(cfg.data, resolve=True)


@pytest.mark.parametrize("name", options("callbacks") + options("logger") + options("head"))
def test_other_groups_resolve(name):
    group = next(g for g in ("callbacks", "logger", "head") if (CONF / g / f"{name}.yaml").exists())
    cfg = compose_cfg([f"{group}={name}"])
    node = OmegaConf.to_container(cfg, resolve=True)[group]
    targets = [node["_target_"]] if "_target_" in node else [v["_target_"] for v in node.values() if v]
    assert targets and all(isinstance(get_class(t), type) for t in targets)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("backbone.width=0", "backbone.width=0"),
        ("backbone.width=-0.5", "expected a number > 0"),
        ("data.image_size=16", "data.image_size=16: expected an integer >= 32"),
        ("data.image_size=12.5", "data.image_size=12.5"),
        ("mode=trian", "Did you mean 'train'"),
        ("task.no_decay=[norm,bais]", "unknown kinds \\['bais'\\]"),
    ],
)
def test_config_errors_name_key_and_values(override, message, tmp_path):
    cfg = compose_cfg([override, f"data.root={tmp_path}/never_read"])
    with pytest.raises(ConfigError, match=message):
        dispatch(cfg, tmp_path / "run")
    assert not (tmp_path / "never_read").exists()  # failed before any data was touched


def test_test_and_predict_need_a_checkpoint(tmp_path):
    from mbtasks.tasks import build_task

    with pytest.raises(ConfigError, match="ckpt_path"):
        dispatch(compose_cfg(["mode=test"]), tmp_path)
    # predict.input is the predict mode's own key (PredictSettings): checked by the mode, once its checkpoint is read
    cfg = compose_cfg(["backbone.width=0.25", "data.image_size=32"])
    info = {"class_names": ["a", "b"], "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    ckpt = save_checkpoint(build_task(cfg, info, training=False), cfg, tmp_path / "ok.ckpt")
    with pytest.raises(ConfigError, match="predict.input"):
        dispatch(compose_cfg(["mode=predict", f"ckpt_path={ckpt}"]), tmp_path / "predict")


def test_misspelled_key_gets_a_suggestion():
    hints = misspelled_keys(["backbone.widht=0.5", "data.image_size=64"], CONFIG_DIR)
    assert len(hints) == 1 and "'backbone.width'" in hints[0]


def test_cli_reports_user_errors_without_traceback(tmp_path):
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "mbtasks", *args, f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    bad_width = run("backbone.width=-1")
    assert bad_width.returncode == 2
    assert "backbone.width=-1" in bad_width.stderr and "Traceback" not in bad_width.stderr
    bad_group = run("backbone=mobilenet_v9")
    assert bad_group.returncode != 0
    assert "mobilenet_v1" in bad_group.stderr + bad_group.stdout  # lists the valid options
    typo = run("backbone.widht=0.5")
    assert typo.returncode != 0 and "Did you mean 'backbone.width'" in typo.stderr
    # a value a constructor refuses: our message, not Hydra's "Error in call to target" wrapper
    bad_value = run("mode=profile", "task=embedding", "task.miner=semihadr")
    assert bad_value.returncode == 2
    assert "error: task.miner='semihadr'" in bad_value.stderr and "Did you mean 'semihard'" in bad_value.stderr
    assert "Error in call to target" not in bad_value.stderr
