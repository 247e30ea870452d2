"""mode=export: ONNX / TorchScript files verified against PyTorch, metadata, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mbtasks.errors import ConfigError, ExportError
from mbtasks.export.formats import load_runner, read_metadata
from mbtasks.tasks import load_task
from tests.conftest import run_mode

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def cls_ckpt(tmp_path_factory):
    from mbtasks.data.synthetic import make_shapes_classification

    root = make_shapes_classification(tmp_path_factory.mktemp("shapes"), classes=CLASSES, train_per_class=4,
                                      val_per_class=2, test_per_class=2, image_size=32, seed=1)
    run_dir = tmp_path_factory.mktemp("cls")
    run_mode([f"data.root={root}", "data.generator=null", "data.image_size=32", "data.batch_size=6",
              "backbone.width=0.25", "trainer.max_epochs=1", "task.log_images=0"], run_dir)
    return run_dir / "checkpoints" / "best.ckpt"


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_classification_export_verified(cls_ckpt, tmp_path, fmt, suffix):
    out = run_mode(["mode=export", f"ckpt_path={cls_ckpt}", f"export.format={fmt}"], tmp_path)
    path = tmp_path / f"classification{suffix}"
    assert out["path"] == str(path) and path.is_file() and not leftovers(tmp_path)
    assert out["inputs"].startswith("4 images from")  # real images of the checkpoint's data
    assert set(out["max_abs_diff"]) == {"logits", "probs"} and max(out["max_abs_diff"].values()) < 1e-4
    assert set(out["pytorch_fp32_error"]) == {"logits", "probs"}
    meta = json.loads((tmp_path / "classification.json").read_text())
    assert meta["task"] == "classification" and meta["class_names"] == CLASSES
    assert meta["image_size"] == 32 and len(meta["mean"]) == 3 and len(meta["std"]) == 3
    assert meta["input"]["shape"] == ["N", 3, 32, 32] and meta["verification"]["batch_sizes"] == [4, 1]
    assert read_metadata(fmt, path)["class_names"] == CLASSES
    # dynamic batch: 5 images, a size the export never saw, give PyTorch's probabilities
    task, _ = load_task(cls_ckpt)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = task(x).softmax(1).numpy()
    logits, probs = load_runner(fmt, path)(x.numpy())
    assert probs.shape == (5, 3) and np.abs(probs - expected).max() < 1e-5


def test_onnx_metadata_props(cls_ckpt, tmp_path):
    run_mode(["mode=export", f"ckpt_path={cls_ckpt}", f"export.output={tmp_path}/m/model.onnx"], tmp_path)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m" / "model.onnx")).metadata_props}
    assert json.loads(props["task"]) == "classification" and json.loads(props["class_names"]) == CLASSES
    assert json.loads(props["image_size"]) == 32 and json.loads(props["mbtasks"])["task"] == "classification"
    session = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probs"]
    assert (tmp_path / "m" / "model.json").is_file()


def test_failed_verification_keeps_nothing(cls_ckpt, tmp_path, monkeypatch):
    import mbtasks.modes.export as export

    real = export.load_runner
    monkeypatch.setattr(export, "load_runner", lambda *a: (lambda x: [o + 0.5 for o in real(*a)(x)]))
    with pytest.raises(ExportError, match="output 'logits' differs from PyTorch by 0.5"):
        run_mode(["mode=export", f"ckpt_path={cls_ckpt}"], tmp_path)
    assert not (tmp_path / "classification.onnx").exists() and not leftovers(tmp_path)


def test_interrupted_export_leaves_no_file(cls_ckpt, tmp_path, monkeypatch):
    import mbtasks.modes.export as export

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "compare", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_mode(["mode=export", f"ckpt_path={cls_ckpt}", "export.format=torchscript"], tmp_path)
    assert list(tmp_path.glob("*.pt")) == [] and not leftovers(tmp_path)


def test_export_needs_checkpoint_and_known_format(cls_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="mode=export needs ckpt_path"):
        run_mode(["mode=export"], tmp_path)
    with pytest.raises(ConfigError, match="export.format='tflite'"):
        run_mode(["mode=export", f"ckpt_path={cls_ckpt}", "export.format=tflite"], tmp_path)


def test_cli_failing_comparison_exits_nonzero(cls_ckpt, tmp_path):
    # a negative tolerance fails every comparison: the command must fail and say why
    env = {**os.environ, "MBTASKS_DEBUG": ""}
    proc = subprocess.run([sys.executable, "-m", "mbtasks", "mode=export", f"ckpt_path={cls_ckpt}", "export.atol=-1",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "export verification failed" in proc.stderr
    assert not (tmp_path / "classification.onnx").exists() and not leftovers(tmp_path)


def test_numpy_postprocess_matches_torchvision():
    from mbtasks.export.postprocess import detections_from_outputs
    from mbtasks.heads.box_coding import BoxCoder
    from mbtasks.heads.postprocess import postprocess_detections

    g = torch.Generator().manual_seed(0)
    n, a, k = 2, 300, 4
    anchors = torch.rand(a, 2, generator=g) * 48
    anchors = torch.cat([anchors, anchors + 4 + torch.rand(a, 2, generator=g) * 16], 1)
    logits, deltas = torch.randn(n, a, k + 1, generator=g) * 3, torch.randn(n, a, 4, generator=g)
    coder = BoxCoder()
    expected = postprocess_detections(logits, deltas, anchors, coder, (64, 64), 0.2, 0.5, 20, 100)
    boxes = coder.decode(deltas, anchors).clamp(min=0, max=64)
    got = detections_from_outputs(logits.softmax(-1)[..., 1:].numpy(), boxes.numpy(), 0.2, 0.5, 20, 100)
    for e, o in zip(expected, got, strict=True):
        assert len(o["scores"]) == len(e["scores"]) > 5
        np.testing.assert_allclose(o["scores"], e["scores"].numpy(), rtol=1e-6)
        np.testing.assert_allclose(o["boxes"], e["boxes"].numpy(), atol=1e-4)
        np.testing.assert_array_equal(o["labels"], e["labels"].numpy())


@pytest.fixture(scope="module")
def det_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("det") / "shapes"
    run_dir = tmp_path_factory.mktemp("det_run")
    run_mode(["task=detection", "backbone=mobilenet_v2", "head=ssdlite", f"data.root={root}", "data.image_size=64",
              "data.batch_size=4", f"data.generator.classes=[{','.join(CLASSES)}]", "data.generator.train_images=8",
              "data.generator.val_images=4", "data.generator.test_images=4", "data.generator.image_size=64",
              "backbone.width=0.25", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "task.log_images=0",
              # a small LR keeps 2 steps from blowing up BN statistics (an ill-conditioned net amplifies
              # float32 rounding, which would blur the comparison with PyTorch)
              "optimizer.lr=0.001"], run_dir)
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_detection_export_with_shipped_postprocess(det_ckpt, tmp_path, fmt, suffix):
    from mbtasks.export.postprocess import detections_from_outputs

    out = run_mode(["mode=export", f"ckpt_path={det_ckpt}", f"export.format={fmt}"], tmp_path)
    assert set(out["max_abs_diff"]) == {"scores", "boxes"} and out["inputs"].startswith("4 images")
    meta = json.loads((tmp_path / "detection.json").read_text())
    assert meta["class_names"] == CLASSES and meta["category_ids"] == [1, 3, 5]
    assert set(meta["thresholds"]) == {"score_threshold", "nms_iou", "max_detections", "topk_candidates"}
    task, _ = load_task(det_ckpt)
    task.model.score_threshold = meta["thresholds"]["score_threshold"] = 0.05
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    scores, boxes = load_runner(fmt, tmp_path / f"detection{suffix}")(x.numpy())
    assert scores.shape == (3, meta["num_anchors"], 3) and boxes.shape == (3, meta["num_anchors"], 4)
    got = detections_from_outputs(scores, boxes, **meta["thresholds"])
    expected = task.model.detect(x)
    for e, o in zip(expected, got, strict=True):
        assert len(o["scores"]) == len(e["scores"]) > 0
        np.testing.assert_allclose(o["scores"], e["scores"].numpy(), atol=1e-4)
        np.testing.assert_allclose(o["boxes"], e["boxes"].numpy(), atol=1e-2)
        np.testing.assert_array_equal(o["labels"], e["labels"].numpy())
