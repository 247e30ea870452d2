"""mode=predict's typed settings (issue 27): the predict block and each task's own keys are checked by their
settings classes; mbtasks.load returns mbtasks.Model, a class written in code around the task's predictor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

import mbtasks
from mbtasks.errors import ConfigError
from mbtasks.inference import Predictor
from mbtasks.inference.settings import PredictSettings
from mbtasks.settings import build
from mbtasks.tasks import build_task, spec_for_config
from tests.conftest import compose_cfg, run_mode, save_checkpoint

INFO = {"class_names": ["a", "b"], "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}


def settings_of(overrides: list[str]) -> PredictSettings:
    cfg = compose_cfg(overrides)
    return build(cfg.predict, PredictSettings, options=spec_for_config(cfg).predict_options)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["predict.batch_size=0"], r"predict\.batch_size=0: expected an integer >= 1 \(e\.g\. 32\)"),
        (["predict.precision=16"], r"predict\.precision='16': expected one of \['32', '32-true', 'bf16'"),
        (["predict.fold_bn=maybe"], r"predict\.fold_bn='maybe': expected one of \[True, False\]"),
        (["predict.top_k=0"], r"predict\.top_k=0: expected an integer >= 1 \(e\.g\. 5\)"),
        (["predict.score_threshold=high"], r"predict\.score_threshold='high': expected a number"),
        (["task=embedding", "predict.crop_margin=-0.1"], r"predict\.crop_margin=-0\.1: expected a number >= 0"),
        (["task=embedding", "predict.identify_threshold=7.0"], r"predict\.identify_threshold=7\.0: expected a"),
        (["+predict.top_kk=3"], r"unknown key \['predict\.top_kk'\]: valid keys under 'predict'"),
    ],
)
def test_bad_predict_keys_are_refused_by_their_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        settings_of(["predict.input=photos", *overrides])


def test_predict_needs_an_input_or_a_task_input():
    message = r"mode=predict needs predict\.input=PATH \(an image file or a folder of images\) \(embedding"
    with pytest.raises(ConfigError, match=message):
        settings_of([])
    with pytest.raises(ConfigError, match=message):
        settings_of(["task=embedding"])
    assert settings_of(["task=embedding", "predict.pairs=pairs.txt"]).options.pairs == "pairs.txt"


def test_each_task_reads_its_own_keys_from_its_config_file():
    cls = settings_of(["predict.input=x", "predict.top_k=3"])
    assert (cls.batch_size, cls.precision, cls.options.top_k) == (32, "32", 3)
    det = settings_of(["task=detection", "predict.input=x"])
    assert det.score_threshold == 0.3 and det.options is None  # shared: typed without task=detection too
    emb = settings_of(["task=embedding", "predict.input=x"]).options
    assert (emb.crop_margin, emb.crop_square, emb.identify_threshold, emb.detector) == (0.0, True, None, None)
    # classification's key is not the other tasks'
    with pytest.raises(Exception, match="top_k"):
        compose_cfg(["task=detection", "predict.top_k=3"])


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cls")
    cfg = compose_cfg(["backbone.width=0.25", "data.image_size=32"])
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(folder / "x.png")
    return save_checkpoint(build_task(cfg, INFO, training=False), cfg, folder / "ok.ckpt"), folder / "x.png"


def test_load_returns_a_model_class_written_in_code(classifier):
    ckpt, _ = classifier
    model = mbtasks.load(ckpt, device="cpu")
    assert type(model) is mbtasks.Model and isinstance(model.predictor, Predictor)
    assert type(model.predictor) is model.task.spec.predictor
    assert {"predict", "export", "profile", "class_names"} <= set(dir(model))
    model.batch_size = 1  # the predictor's attribute, set through the model
    assert model.predictor.batch_size == 1
    assert "model" in repr(model).lower() and model.task_name == "classification"


def test_predictors_write_no_files_the_task_does(classifier, tmp_path):
    ckpt, image = classifier
    model = mbtasks.load(ckpt, device="cpu")
    assert not hasattr(Predictor, "write") and not hasattr(type(model.predictor), "write")
    out = run_mode(["mode=predict", f"ckpt_path={ckpt}", f"predict.input={image}", "predict.top_k=1"], tmp_path)
    (row,) = out["predictions"]
    assert [t["label"] for t in row["top_k"]] == [model.predict(image, top_k=1)[0].label]
    settings = settings_of(["predict.input=x"])
    assert dataclasses.replace(settings, batch_size=2).batch_size == 2


def test_a_checkpoint_brings_its_task_keys_without_task(tmp_path):
    """``mode=predict ckpt_path=<embedding ckpt> predict.pairs=...`` composes without ``task=embedding``
    (the CLI and mbtasks.api.run add the checkpoint's task group), as before the keys moved per task."""
    from mbtasks.config import with_checkpoint_task

    cfg = compose_cfg(["task=embedding", "backbone.width=0.25", "data.image_size=32"])
    ckpt = save_checkpoint(build_task(cfg, INFO, training=False), cfg, tmp_path / "emb.ckpt")
    given = ["mode=predict", f"ckpt_path={ckpt}", "predict.pairs=pairs.txt"]
    assert with_checkpoint_task(given) == [*given, "task=embedding"]
    assert compose_cfg(with_checkpoint_task(given)).predict.pairs == "pairs.txt"
    # unchanged: a task given, a training run (it builds cfg.task), or no readable checkpoint
    for same in (
        [*given, "task=embedding"],
        ["mode=train", f"ckpt_path={ckpt}"],
        ["mode=predict", f"ckpt_path={tmp_path / 'missing.ckpt'}"],
        ["mode=predict", f"ckpt_path={tmp_path}"],
    ):
        assert with_checkpoint_task(same) == same
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert with_checkpoint_task(["mode=export", f"ckpt_path={tmp_path / 'junk.ckpt'}"])[-1].startswith("ckpt_path")
