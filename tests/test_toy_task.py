"""A fourth task needs no edit under mbtasks/: tests/toy_task.py and tests/conf/ are all of it, and
every mode runs it through its spec (README "Architecture")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import mbtasks
from mbtasks.errors import ConfigError
from tests.conftest import is_fraction_of, run_mode

SEARCHPATH = f"hydra.searchpath=[file://{Path(__file__).parent / 'conf'}]"


def toy(root, *extra: str) -> list[str]:
    return [
        SEARCHPATH,
        "task=toy",
        f"data.root={root}",
        "data.generator=null",
        "data.image_size=32",
        "data.batch_size=8",
        "backbone.width=0.25",
        *extra,
    ]


def test_a_toy_task_runs_every_mode(tiny_shapes, tmp_path):
    metrics = run_mode(toy(tiny_shapes, "trainer.max_epochs=1"), tmp_path / "train")
    assert is_fraction_of(metrics["test/acc"], 9) and np.isfinite(metrics["val/loss"])
    ckpt = tmp_path / "train" / "checkpoints" / "best.ckpt"
    assert run_mode(toy(tiny_shapes, "mode=test", f"ckpt_path={ckpt}"), tmp_path / "test")["test/split"] == "test"
    images = tiny_shapes / "test"
    out = run_mode(toy(tiny_shapes, "mode=predict", f"ckpt_path={ckpt}", f"predict.input={images}"), tmp_path / "p")
    written = json.loads((tmp_path / "p" / "toy.json").read_text())
    assert written == out and len(out["labels"]) == len(list(images.rglob("*.png")))
    assert set(out["labels"].values()) <= {"circle", "square", "triangle"}
    exported = run_mode(toy(tiny_shapes, "mode=export", f"ckpt_path={ckpt}", f"export.inputs={images}"), tmp_path / "e")
    assert Path(exported["path"]).name == "toy.onnx" and exported["end_to_end"]["max_abs_diff"]["probs"] < 5e-3
    profile = run_mode(toy(tiny_shapes, "mode=profile", "profile.repeats=2"), tmp_path / "prof")
    assert profile["task"] == "toy" and profile["params"] > 0
    report = run_mode(toy(tiny_shapes, "mode=check"), tmp_path / "check")
    assert report["ok"] and report["splits"]["train"]["readable"] == 24
    model = mbtasks.load(ckpt, device="cpu")
    assert isinstance(model, mbtasks.Model) and model.task_name == "toy"
    assert model.predict(np.zeros((40, 50, 3), np.uint8))[0][1] in {"circle", "square", "triangle"}


def test_a_toy_task_draws_its_own_figure(tiny_shapes, tmp_path):
    """The toy's figure (a pure function in tests/toy_task.py) reaches TensorBoard and the run dir through the
    one run-plots callback, with no edit under mbtasks/."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_mode(toy(tiny_shapes, "trainer.max_epochs=1"), tmp_path)
    with Image.open(tmp_path / "class_accuracy.png") as png:
        assert png.format == "PNG" and min(png.size) >= 200
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "val/class_accuracy" in events.Tags()["images"]


def test_a_toy_task_has_its_own_predict_option(tiny_shapes, tmp_path):
    """``predict.toy_min_score`` is declared, defaulted and written by tests/toy_task.py and
    tests/conf/task/predict/toy.yaml alone: it changes what mode=predict writes, and its range is checked."""
    from mbtasks.errors import ConfigError
    from mbtasks.tasks import build_task
    from tests.conftest import compose_cfg, save_checkpoint

    cfg = compose_cfg(toy(tiny_shapes))
    info = {"class_names": ["circle", "square", "triangle"], "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    ckpt = save_checkpoint(build_task(cfg, info, training=False), cfg, tmp_path / "toy.ckpt")
    images = tiny_shapes / "test"
    base = toy(tiny_shapes, "mode=predict", f"ckpt_path={ckpt}", f"predict.input={images}")
    scores = [score for _, _, score in mbtasks.load(ckpt, device="cpu").predict(images)]
    assert max(scores) < 0.9  # three classes, untrained: no image is that sure
    everything = run_mode(base, tmp_path / "all")  # toy_min_score: 0.0 in its config file
    assert len(everything["labels"]) == len(scores) == len(list(images.rglob("*.png")))
    none = run_mode([*base, "predict.toy_min_score=0.9"], tmp_path / "none")
    assert none == {"labels": {}} and json.loads((tmp_path / "none" / "toy.json").read_text()) == none
    with pytest.raises(ConfigError, match=r"predict\.toy_min_score=2: expected a number >= 0 and <= 1"):
        run_mode([*base, "predict.toy_min_score=2"], tmp_path / "bad")


def test_the_toy_export_tail_and_its_own_option(tiny_shapes, tmp_path):
    """The toy's own end-to-end tail (the label, a temperature-scaled confidence) in both formats, and its
    own key export.toy_temperature reaching it: all of it in tests/, nothing under mbtasks/ (issue 27)."""
    from mbtasks.export.formats import load_e2e_runner
    from mbtasks.tasks import build_task
    from tests.conftest import compose_cfg, save_checkpoint

    cfg = compose_cfg(toy(tiny_shapes))
    info = {"class_names": ["circle", "square", "triangle"], "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    ckpt = save_checkpoint(build_task(cfg, info, training=False), cfg, tmp_path / "toy.ckpt")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    answers = {}
    for fmt, temperature in (("onnx", 1.0), ("onnx", 0.25), ("torchscript", 0.25)):
        run_dir = tmp_path / f"{fmt}-{temperature}"
        overrides = [f"export.format={fmt}", f"export.toy_temperature={temperature}"]
        record = run_mode(toy(tiny_shapes, "mode=export", f"ckpt_path={ckpt}", *overrides), run_dir)
        assert record["end_to_end"]["vs"] == "mode=predict"
        meta = json.loads((run_dir / "toy.json").read_text())
        assert meta["output_names"] == ["probs", "label", "confidence"] and meta["temperature"] == temperature
        got = load_e2e_runner(fmt, Path(record["path"]))(pixels)
        assert got["label"].dtype == np.int64 and got["label"].shape == got["confidence"].shape == (3,)
        np.testing.assert_array_equal(got["label"], got["probs"].argmax(1))
        scaled = np.exp(np.log(got["probs"]) / temperature)
        np.testing.assert_allclose(got["confidence"], (scaled / scaled.sum(1, keepdims=True)).max(1), rtol=1e-4)
        answers[fmt, temperature] = got
    np.testing.assert_allclose(answers["onnx", 1.0]["confidence"], answers["onnx", 1.0]["probs"].max(1), rtol=1e-5)
    # a lower temperature sharpens the confidence; the labels stay
    assert (answers["onnx", 0.25]["confidence"] > answers["onnx", 1.0]["confidence"]).all()
    np.testing.assert_array_equal(answers["onnx", 0.25]["label"], answers["onnx", 1.0]["label"])
    np.testing.assert_allclose(
        answers["torchscript", 0.25]["confidence"], answers["onnx", 0.25]["confidence"], atol=1e-4
    )
    with pytest.raises(ConfigError, match=r"export.toy_temperature=0: expected a number > 0"):
        run_mode(toy(tiny_shapes, "mode=export", f"ckpt_path={ckpt}", "export.toy_temperature=0"), tmp_path / "bad")
