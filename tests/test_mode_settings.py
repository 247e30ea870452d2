"""The train and profile blocks are typed settings (issue 27): each key's range is declared once, by its
class, and checked when the mode starts; the keys of no mode block are checked at start-up by the
classes beside the code that takes them (no NUMERIC_KEYS table)."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

import mbtasks.config
from mbtasks.callbacks.time_budget import BudgetSettings
from mbtasks.config import validate
from mbtasks.errors import ConfigError
from mbtasks.modes.profile import ProfileSettings
from mbtasks.modes.train import TrainSettings, train_settings
from mbtasks.resume import resume_config
from mbtasks.settings import build
from tests.conftest import compose_cfg, run_mode


def test_the_blocks_name_their_class_and_hold_every_default():
    cfg = compose_cfg([])
    train = build(cfg.train, TrainSettings)
    assert cfg.train._target_ == "mbtasks.modes.train.TrainSettings"
    assert (train.time, train.val_share, train.test_after) == (None, 0.1, True)
    profile = build(cfg.profile, ProfileSettings)
    assert cfg.profile._target_ == "mbtasks.modes.profile.ProfileSettings"
    assert dataclasses.asdict(profile) == {
        "num_classes": 1000,
        "batch_size": 1,
        "warmup": 3,
        "repeats": 20,
        "threads": None,
    }
    # the classes hold no defaults: the config file is their one place
    for cls in (TrainSettings, ProfileSettings):
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls))


def test_numeric_keys_table_and_second_mode_list_are_gone():
    assert not hasattr(mbtasks.config, "NUMERIC_KEYS") and not hasattr(mbtasks.config, "MODES")


def test_a_run_config_written_before_has_no_target():
    old = {"time": "5m", "val_share": None, "test_after": False}
    assert build(old, TrainSettings) == TrainSettings(time="5m", val_share=None, test_after=False)
    assert train_settings(OmegaConf.create({"train": old})).time == "5m"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.val_share=1", r"train\.val_share=1: expected a number > 0 and < 1 \(e\.g\. 0\.1, or null"),
        ("train.val_share=0", r"train\.val_share=0: expected a number > 0 and < 1"),
        ("train.val_share=1.5", r"train\.val_share=1\.5: expected a number"),
        ("train.test_after=yes", r"train\.test_after='yes': expected one of \[True, False\]"),
        ("train.time=0", r"train\.time=0: "),
        ("train.time=90", r"train\.time=90: expected a duration such as 10m"),
    ],
)
def test_bad_train_keys_fail_before_the_data_is_read(tmp_path, override, message):
    # val_share was checked only when the callback was built (after the data was read), test_after not at all
    with pytest.raises(ConfigError, match=message):
        run_mode([f"data.root={tmp_path / 'missing'}", "data.generator=null", override], tmp_path / "run")


def test_the_time_budget_callback_checks_its_keys_as_the_train_block_does():
    from mbtasks.callbacks import TimeBudget

    assert issubclass(TrainSettings, BudgetSettings)  # one declaration of train.time / train.val_share
    with pytest.raises(ConfigError, match=r"train\.val_share=1: expected a number > 0 and < 1"):
        TimeBudget(time="1m", val_share=1)
    assert TimeBudget(time="1m30s", val_share=None).budget == 90


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("profile.batch_size=0", r"profile\.batch_size=0: expected an integer >= 1 \(e\.g\. 1\)"),
        ("profile.warmup=-1", r"profile\.warmup=-1: expected an integer >= 0"),
        ("profile.repeats=0", r"profile\.repeats=0: expected an integer >= 1"),
        ("profile.repeats=2.5", r"profile\.repeats=2\.5: expected an integer >= 1"),
        ("profile.threads=0", r"profile\.threads=0: expected an integer >= 1"),
        ("profile.num_classes=0", r"profile\.num_classes=0: expected an integer >= 1"),
    ],
)
def test_bad_profile_keys_are_refused_by_mode_profile(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_mode(["mode=profile", "backbone.width=0.25", "data.image_size=32", override], tmp_path)
    assert not (tmp_path / "profile.json").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=voc", "data.root=/nowhere", "data.val_fraction=0"], r"data\.val_fraction=0: expected a number > 0"),
        (["data=voc", "data.root=/nowhere", "data.val_fraction=1.5"], r"data\.val_fraction=1\.5: .*<= 1\.0"),
        (["data.batch_size=2.5"], r"data\.batch_size=2\.5: expected an integer >= 1 \(e\.g\. 32\)"),
        (["optimizer.lr=-1"], r"optimizer\.lr=-1: expected a number > 0 \(e\.g\. 0\.01\)"),
        (["seed=4294967296"], r"seed=4294967296: expected an integer >= 0 and <= 4294967295 \(e\.g\. 42\)"),
        (["backbone.width=4.5"], r"backbone\.width=4\.5: expected a number > 0 and <= 4\.0 \(e\.g\. 1\.0, 0\.75"),
    ],
)
def test_keys_of_no_mode_block_are_checked_at_start_up(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(overrides))


def test_keys_a_config_lacks_are_not_checked():
    cfg = compose_cfg(["backbone=timm", "backbone.name=mobilenetv3_small_100"])
    assert "width" not in cfg.backbone
    validate(cfg)


def test_resume_of_a_run_written_before_the_train_keys_it_lacks(tmp_path):
    """A run dir whose config.yaml predates train.val_share / train.test_after (and _target_) resumes
    with today's defaults for them."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")  # resume_config only looks for it
    old = OmegaConf.to_container(compose_cfg([]), resolve=True)
    old["train"] = {"time": "7m"}
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    overrides = [f"resume={run_dir}"]
    cfg, _ = resume_config(compose_cfg(overrides), run_dir, overrides)
    assert train_settings(cfg) == TrainSettings(time="7m", val_share=0.1, test_after=True)
