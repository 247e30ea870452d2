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
def cls_ckpt(tiny_run):
    return tiny_run[1] / "checkpoints" / "best.ckpt"


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_classification_export_verified(cls_ckpt, tmp_path, fmt, suffix):
    out = run_mode(
        ["mode=export", f"ckpt_path={cls_ckpt}", f"export.format={fmt}", "export.end_to_end=false"], tmp_path
    )
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
    run_mode(
        ["mode=export", f"ckpt_path={cls_ckpt}", f"export.output={tmp_path}/m/model.onnx", "export.end_to_end=false"],
        tmp_path,
    )
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
    monkeypatch.setattr(export, "load_runner", lambda *a: lambda x: [o + 0.5 for o in real(*a)(x)])
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
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbtasks",
            "mode=export",
            f"ckpt_path={cls_ckpt}",
            "export.atol=-1",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "export verification failed" in proc.stderr
    assert not (tmp_path / "classification.onnx").exists() and not leftovers(tmp_path)


def test_numpy_postprocess_matches_torchvision():
    from mbtasks.export.postprocess import detections_from_outputs
    from mbtasks.models.detection.box_coding import BoxCoder
    from mbtasks.models.detection.postprocess import postprocess_detections

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
    run_mode(
        [
            "task=detection",
            "backbone=mobilenet_v2",
            "head=ssdlite",
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
            "task.log_images=0",
            # a small LR keeps 2 steps from blowing up BN statistics (an ill-conditioned net amplifies
            # float32 rounding, which would blur the comparison with PyTorch)
            "optimizer.lr=0.001",
        ],
        run_dir,
    )
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_detection_export_with_shipped_postprocess(det_ckpt, tmp_path, fmt, suffix):
    from mbtasks.export.postprocess import detections_from_outputs

    out = run_mode(
        ["mode=export", f"ckpt_path={det_ckpt}", f"export.format={fmt}", "export.end_to_end=false"], tmp_path
    )
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


# ---- end to end: uint8 pixels in, mode=predict's answers out -------------------------------------------

SIZES = [(40, 24), (17, 50), (64, 64)]  # (width, height) of the verification / comparison images


def sized_images(src_root, folder, sizes=SIZES):
    """Real images of the data set, resized with PIL to several sizes (PNG, so pixels are exact)."""
    from PIL import Image

    src = sorted(p for p in src_root.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    for i, (size, path) in enumerate(zip(sizes, src, strict=False)):
        Image.open(path).convert("RGB").resize(size).save(folder / f"img{i}_{size[0]}x{size[1]}.png")
    return sorted(folder.iterdir())


def data_root(ckpt):
    from pathlib import Path

    return Path(load_task(ckpt)[1].data.root)


def pixels(path):
    from mbtasks.data.image_files import read_rgb

    return read_rgb(path)[None]


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_classification_end_to_end_equals_predict(cls_ckpt, tmp_path, fmt, suffix):
    from mbtasks.export.formats import load_e2e_runner

    files = sized_images(data_root(cls_ckpt), tmp_path / "images")
    out = run_mode(
        [
            "mode=export",
            f"ckpt_path={cls_ckpt}",
            f"export.format={fmt}",
            f"export.inputs={tmp_path}/images",
            "export.top_k=2",
        ],
        tmp_path / "export",
    )
    e2e = out["end_to_end"]
    assert e2e["vs"] == "mode=predict" and {"40x24", "17x50", "64x64"} <= set(e2e["sizes"])
    meta = json.loads((tmp_path / "export" / "classification.json").read_text())
    assert meta["end_to_end"] and meta["input"]["name"] == "pixels" and meta["input"]["dtype"] == "uint8"
    assert meta["output_names"] == ["probs", "scores", "labels"] and meta["top_k"] == 2
    run = load_e2e_runner(fmt, tmp_path / "export" / f"classification{suffix}")
    predicted = run_mode(
        ["mode=predict", f"ckpt_path={cls_ckpt}", f"predict.input={tmp_path}/images", "predict.top_k=2"],
        tmp_path / "predict",
    )["predictions"]
    for path, pred in zip(files, predicted, strict=True):
        got = run(pixels(path))
        assert got["probs"].shape == (1, 3) and got["labels"].shape == (1, 2) and got["labels"].dtype == np.int64
        assert [CLASSES[i] for i in got["labels"][0]] == [t["label"] for t in pred["top_k"]]
        np.testing.assert_allclose(got["scores"][0], [t["score"] for t in pred["top_k"]], atol=2e-3)


def test_end_to_end_centre_crop_pipeline(cls_ckpt, tmp_path):
    """ImageFolder's eval pipeline (shorter side, then centre crop) rebuilt in the graph, checked against it."""
    from omegaconf import OmegaConf

    from mbtasks.modes.export import export_settings, export_task

    task, train_cfg = load_task(cls_ckpt)
    OmegaConf.update(
        train_cfg,
        "data.eval_transforms",
        {
            "_target_": "albumentations.Compose",
            "transforms": [
                {"_target_": "albumentations.SmallestMaxSize", "max_size": 37},
                {"_target_": "albumentations.CenterCrop", "height": 32, "width": 32},
            ],
        },
        force_add=True,
    )
    sized_images(data_root(cls_ckpt), tmp_path / "images", [(90, 41), (33, 77), (37, 37)])
    settings = export_settings("classification", inputs=str(tmp_path / "images"))
    out = export_task(task, train_cfg, settings, tmp_path / "m.onnx")
    assert {"90x41", "33x77"} <= set(out["end_to_end"]["sizes"])
    meta = json.loads((tmp_path / "m.json").read_text())
    assert "shorter side resized to 37, centre 32x32 crop" in meta["input"]["preprocessing"]


def test_end_to_end_refuses_unknown_eval_transforms(cls_ckpt, tmp_path):
    from omegaconf import OmegaConf

    from mbtasks.modes.export import export_settings, export_task

    task, train_cfg = load_task(cls_ckpt)
    OmegaConf.update(
        train_cfg,
        "data.eval_transforms.transforms",
        [{"_target_": "albumentations.LongestMaxSize", "max_size": 32}],
        force_add=True,
    )
    with pytest.raises(ConfigError, match=r"\['LongestMaxSize'\].*export.end_to_end=false"):
        export_task(task, train_cfg, export_settings("classification"), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_end_to_end_mismatch_keeps_nothing(cls_ckpt, tmp_path, monkeypatch):
    import mbtasks.modes.export as export

    real = export.load_e2e_runner

    def shifted(*args):
        run = real(*args)
        return lambda x, **kw: {k: (v + 0.01 if k == "probs" else v) for k, v in run(x, **kw).items()}

    monkeypatch.setattr(export, "load_e2e_runner", shifted)
    with pytest.raises(
        ExportError,
        match=r"end-to-end export verification failed on image 0 \(\d+x\d+\): "
        "probabilities differ from mode=predict's by 0.01",
    ):
        run_mode(["mode=export", f"ckpt_path={cls_ckpt}"], tmp_path)
    assert list(tmp_path.glob("classification.*")) == [] and not leftovers(tmp_path)


@pytest.mark.slow
def test_metadata_never_overwrites_an_unrelated_json(cls_ckpt, tmp_path):
    mine = tmp_path / "model.json"
    mine.write_text('{"my": "settings"}')
    with pytest.raises(ConfigError, match=f"{mine} exists and is not an mbtasks export's metadata"):
        run_mode(["mode=export", f"ckpt_path={cls_ckpt}", f"export.output={tmp_path}/model.onnx"], tmp_path)
    assert mine.read_text() == '{"my": "settings"}' and not (tmp_path / "model.onnx").exists()
    with pytest.raises(ConfigError, match="cannot end in .json"):
        run_mode(["mode=export", f"ckpt_path={cls_ckpt}", f"export.output={tmp_path}/other.json"], tmp_path)
    # an earlier export's metadata is replaced together with its model
    run_mode(["mode=export", f"ckpt_path={cls_ckpt}", f"export.output={tmp_path}/m.onnx"], tmp_path)
    run_mode(["mode=export", f"ckpt_path={cls_ckpt}", f"export.output={tmp_path}/m.onnx", "export.top_k=1"], tmp_path)
    assert json.loads((tmp_path / "m.json").read_text())["top_k"] == 1


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_detection_end_to_end_equals_predict(det_ckpt, tmp_path, fmt, suffix):
    from mbtasks.export.formats import load_e2e_runner

    files = sized_images(data_root(det_ckpt), tmp_path / "images", [(80, 48), (50, 90), (64, 64)])
    out = run_mode(
        [
            "mode=export",
            f"ckpt_path={det_ckpt}",
            f"export.format={fmt}",
            f"export.inputs={tmp_path}/images",
            "export.max_detections=20",
        ],
        tmp_path / "export",
    )
    assert out["end_to_end"]["detections"] > 0
    meta = json.loads((tmp_path / "export" / "detection.json").read_text())
    assert meta["output_names"] == ["boxes", "scores", "labels", "category_ids", "num_detections"]
    assert meta["thresholds"]["max_detections"] == 20
    run = load_e2e_runner(fmt, tmp_path / "export" / f"detection{suffix}")
    predicted = run_mode(
        ["mode=predict", f"ckpt_path={det_ckpt}", f"predict.input={tmp_path}/images"], tmp_path / "predict"
    )["detections"]
    for path in files:
        # predict keeps every detection (up to the checkpoint's 100); the export its best 20
        ref = sorted((d for d in predicted if d["file_name"] == str(path)), key=lambda d: -d["score"])[:20]
        got = run(pixels(path))
        n = int(got["num_detections"][0])
        assert got["boxes"].shape == (1, 20, 4) and n == len(ref) > 0
        assert (got["labels"][0, n:] == -1).all() and (got["scores"][0, n:] == 0).all()
        np.testing.assert_allclose(got["scores"][0, :n], [d["score"] for d in ref], atol=2e-3)
        np.testing.assert_array_equal(got["category_ids"][0, :n], [d["category_id"] for d in ref])
        xywh = got["boxes"][0, :n].copy()
        xywh[:, 2:] -= xywh[:, :2]
        np.testing.assert_allclose(xywh, [d["bbox"] for d in ref], atol=1.0)
        # the thresholds stay inputs: a higher score threshold keeps exactly the detections above it
        high = float(np.median(got["scores"][0, :n]))
        fewer = run(pixels(path), score_threshold=high)
        m = int(fewer["num_detections"][0])
        assert m == int((got["scores"][0, :n] > high).sum())
        np.testing.assert_allclose(fewer["boxes"][0, :m], got["boxes"][0, :m], atol=1e-4)


@pytest.fixture(scope="module")
def emb_ckpt(tmp_path_factory):
    base = tmp_path_factory.mktemp("emb")
    run_mode(
        [
            "task=embedding",
            "backbone.width=0.25",
            f"data_dir={base / 'data'}",
            "data.image_size=32",
            "data.generator.num_identities=8",
            "data.generator.images_per_identity=4",
            "data.generator.image_size=32",
            "data.val_identities=2",
            "data.test_identities=2",
            "data.identities_per_batch=4",
            "data.images_per_identity=2",
            "data.num_folds=2",
            "data.pairs_per_fold=4",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
        ],
        base / "run",
    )
    return base / "run" / "checkpoints" / "last.ckpt"


def readme_deploy_examples() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "deploy.md").read_text()
    section = text.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("\n", 1)[1] for block in section.split("```")[1::2] if block.startswith("python\n")]


@pytest.mark.slow
def test_readme_deploy_examples_run_as_written(cls_ckpt, det_ckpt, emb_ckpt, tmp_path):
    """The Deploy examples (docs/deploy.md), run in a clean interpreter beside the three exports: they print
    the export's answers and import neither mbtasks nor torch."""
    from PIL import Image

    examples = readme_deploy_examples()
    assert len(examples) == 3
    for ckpt in (cls_ckpt, det_ckpt, emb_ckpt):
        run_mode(["mode=export", f"ckpt_path={ckpt}"], tmp_path)
    src = sorted(p for p in data_root(det_ckpt).rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    Image.open(src[0]).convert("RGB").resize((90, 70)).save(tmp_path / "photo.jpg")
    faces = sorted(p for p in data_root(emb_ckpt).rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    Image.open(faces[0]).save(tmp_path / "a.jpg")
    Image.open(faces[-1]).save(tmp_path / "b.jpg")
    no_mbtasks = "\nimport sys\nassert not [m for m in sys.modules if m.split('.')[0] in ('mbtasks', 'torch')]\n"
    outputs = []
    for code in examples:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", code + no_mbtasks], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(proc.stdout)
    cls_lines = outputs[0].splitlines()
    assert len(cls_lines) == 3 and {line.split(":")[0] for line in cls_lines} == set(CLASSES)
    det_lines = outputs[1].splitlines()
    assert det_lines[-1].endswith("detections score above 0.5") and len(det_lines) > 1
    assert all("(category " in line for line in det_lines[:-1])
    assert "squared distance" in outputs[2] and ("same person" in outputs[2] or "different people" in outputs[2])


def test_quantized_network_wraps_end_to_end(cls_ckpt, tmp_path):
    """INT8 later: a QDQ-quantized network graph takes the same float pre/post-processing."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from mbtasks.export.onnx_pipeline import wrap_network
    from mbtasks.export.preprocessing import preprocessing_of
    from mbtasks.modes.export import export_settings, export_task

    task, train_cfg = load_task(cls_ckpt)
    export_task(task, train_cfg, export_settings("classification", end_to_end=False), tmp_path / "net.onnx")

    class Calibration(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"images": rng.standard_normal((1, 3, 32, 32), np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(tmp_path / "net.onnx"), str(tmp_path / "int8.onnx"), Calibration(), quant_format=QuantFormat.QDQ
    )
    pre = preprocessing_of(train_cfg, 32, task.info["mean"], task.info["std"])
    spec = task.spec.export
    post = spec.post_settings(task, spec.graph(task), export_settings("classification", top_k=2).options)
    model = wrap_network(onnx.load(str(tmp_path / "int8.onnx")), pre, lambda g: spec.onnx_tail(g, post))
    assert {"QuantizeLinear", "DequantizeLinear", "Resize", "TopK"} <= {n.op_type for n in model.graph.node}
    session = ort.InferenceSession(model.SerializeToString())
    pixels = np.random.default_rng(1).integers(0, 256, (2, 45, 30, 3), dtype=np.uint8)
    probs, scores, labels = session.run(None, {"pixels": pixels})
    assert (
        probs.shape == (2, 3) and labels.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=3 / 255)
    )  # a QDQ-quantized softmax: one uint8 step per class


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_embedding_end_to_end_equals_predict(emb_ckpt, tmp_path, fmt, suffix):
    from mbtasks.export.formats import load_e2e_runner

    files = sized_images(data_root(emb_ckpt), tmp_path / "images", [(40, 52), (31, 29), (32, 32)])
    out = run_mode(
        ["mode=export", f"ckpt_path={emb_ckpt}", f"export.format={fmt}", f"export.inputs={tmp_path}/images"],
        tmp_path / "export",
    )
    assert {"40x52", "31x29"} <= set(out["end_to_end"]["sizes"])
    task, _ = load_task(emb_ckpt)
    meta = json.loads((tmp_path / "export" / "embedding.json").read_text())
    assert meta["output_names"] == ["embeddings"] and meta["flip_tta"] == task.flip_tta
    assert meta["thresholds"]["verification"] == pytest.approx(float(task.threshold))
    run_mode(["mode=predict", f"ckpt_path={emb_ckpt}", f"predict.input={tmp_path}/images"], tmp_path / "predict")
    expected = np.load(tmp_path / "predict" / "embeddings.npy")
    run = load_e2e_runner(fmt, tmp_path / "export" / f"embedding{suffix}")
    got = np.concatenate([run(pixels(p))["embeddings"] for p in files])
    assert got.shape == expected.shape and np.abs(got - expected).max() < 5e-3
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("shorter_side", [None, 45])
def test_in_graph_resize_matches_predict_within_one_level(shorter_side):
    """The ONNX and TorchScript preprocessing vs albumentations (cv2), before normalisation: at most one
    uint8 level apart (cv2's fixed-point weights), shrinking and enlarging, odd sizes."""
    import albumentations as A
    from onnx import TensorProto, helper

    from mbtasks.export.onnx_pipeline import _Graph, preprocess_nodes
    from mbtasks.export.preprocessing import Preprocessing
    from mbtasks.export.torch_pipeline import Preprocess

    pre = Preprocessing(40, shorter_side, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # output = pixel levels
    g = _Graph("pre/")
    preprocess_nodes(g, pre)
    graph = helper.make_graph(
        g.nodes,
        "pre",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, None)],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, None)],
        initializer=g.inits,
    )
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    )
    script = torch.jit.script(Preprocess(pre))
    reference = A.Compose(
        [A.Resize(40, 40)] if shorter_side is None else [A.SmallestMaxSize(max_size=shorter_side), A.CenterCrop(40, 40)]
    )
    rng = np.random.default_rng(0)
    for h, w in [(97, 131), (23, 61), (40, 40), (300, 41)]:
        # smooth content with sharp edges, like photos
        image = np.clip(rng.normal(128, 60, (h // 4 + 1, w // 4 + 1, 3)), 0, 255).astype(np.uint8)
        image = np.kron(image, np.ones((4, 4, 1), np.uint8))[:h, :w]
        expected = reference(image=image)["image"].astype(np.float32).transpose(2, 0, 1)
        got_onnx = session.run(None, {"pixels": image[None]})[0][0]
        got_script = script(torch.from_numpy(image[None]))[0].numpy()
        for got in (got_onnx, got_script):
            assert got.shape == expected.shape and np.abs(got - expected).max() <= 1.0 + 1e-3
            assert (np.abs(got - expected) > 0.5).mean() < 0.2
