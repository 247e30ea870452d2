"""export.quantize=int8: onnxruntime static quantization verified on the task metric."""

import json

import onnx
import pytest

from mbtasks.errors import ConfigError, ExportError
from mbtasks.modes.export import export_settings, export_task
from mbtasks.tasks import load_task
from tests.test_export import cls_ckpt, det_ckpt, emb_ckpt, leftovers  # noqa: F401 - fixtures

TASKS = {
    "classification": ("cls_ckpt", "top1", "int8_max_drop_top1"),
    "detection": ("det_ckpt", "map_50", "int8_max_drop_map50"),
    "embedding": ("emb_ckpt", "verification_accuracy", "int8_max_drop_verification"),
}


def cls_settings(**values):
    return export_settings("classification", **values)


@pytest.mark.parametrize(
    ("name", "end_to_end"),
    [
        ("classification", True),
        ("classification", False),
        pytest.param("detection", True, marks=pytest.mark.slow),
        ("embedding", True),
        ("embedding", False),
    ],
)
def test_int8_export_records_metric_and_speed(name, end_to_end, request, tmp_path):
    fixture, metric, max_drop = TASKS[name]
    task, train_cfg = load_task(request.getfixturevalue(fixture))
    out = tmp_path / f"{name}.onnx"
    settings = export_settings(
        # max drop 1: the whole metric, any drop is accepted
        name,
        end_to_end=end_to_end,
        quantize="int8",
        calibration_images=8,
        speed_batch=4,
        **{max_drop: 1.0},
    )
    record = export_task(task, train_cfg, settings, out)
    meta = json.loads(out.with_suffix(".json").read_text())
    int8 = meta["verification"]["int8"]
    assert record["int8"] == int8 and int8["metric"] == metric and meta["end_to_end"] is end_to_end
    assert record["quantization"] == meta["quantization"]
    assert int8["drop"] == pytest.approx(int8["fp32"] - int8["int8"])
    assert int8["speed"]["fp32"] > 0 and int8["speed"]["int8"] > 0 and int8["speed"]["batch"] == 4
    assert 0 < meta["quantization"]["calibration_images"] <= 8
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert ("Resize" in ops) is end_to_end
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_int8_float_tail_keeps_post_processing_float(det_ckpt):  # noqa: F811
    """Box decoding (Exp) and the softmax come after the last conv: never quantized."""
    from mbtasks.export.quantize import excluded_nodes, float_tail

    task, train_cfg = load_task(det_ckpt)
    out_dir = det_ckpt.parent.parent / "int8-tail"
    export_task(task, train_cfg, export_settings("detection", end_to_end=False), out_dir / "net.onnx")
    model = onnx.load(str(out_dir / "net.onnx"))
    from mbtasks.export.quantize import name_nodes

    name_nodes(model)
    tail = set(float_tail(model))
    kinds = {n.op_type for n in model.graph.node if n.name in tail}
    assert {"Softmax", "Exp"} <= kinds and "Conv" not in kinds
    names, counts = excluded_nodes(model, ["depthwise"])
    assert counts["depthwise"] > 0 and len(names) == counts["float_tail"] + counts["depthwise"]


def test_int8_metric_drop_refused_keeps_nothing(cls_ckpt, tmp_path):  # noqa: F811
    task, train_cfg = load_task(cls_ckpt)
    out = tmp_path / "cls.onnx"
    with pytest.raises(ExportError, match="int8 refused.*int8_max_drop_top1=-1"):
        settings = cls_settings(quantize="int8", calibration_images=4, int8_max_drop_top1=-1, speed_batch=2)
        export_task(task, train_cfg, settings, out)
    assert leftovers(tmp_path) == [] and not out.exists()


@pytest.mark.slow
def test_int8_cli_refusal_exits_2(cls_ckpt, tmp_path):  # noqa: F811

    out = tmp_path / "m.onnx"
    proc = __import__("subprocess").run(
        [
            __import__("sys").executable,
            "-m",
            "mbtasks",
            "mode=export",
            f"ckpt_path={cls_ckpt}",
            f"export.output={out}",
            "export.quantize=int8",
            "export.int8_max_drop_top1=-1",
            "export.calibration_images=4",
            "export.speed_batch=2",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "int8 refused" in proc.stderr + proc.stdout and not out.exists()


@pytest.mark.slow
def test_int8_exclude_keeps_op_type_float(cls_ckpt, tmp_path):  # noqa: F811
    task, train_cfg = load_task(cls_ckpt)
    kw = dict(end_to_end=False, quantize="int8", calibration_images=4, int8_max_drop_top1=1.0, speed_batch=2)
    export_task(task, train_cfg, cls_settings(**kw), tmp_path / "all.onnx")
    export_task(task, train_cfg, cls_settings(int8_exclude=["depthwise"], **kw), tmp_path / "dw.onnx")
    meta = json.loads((tmp_path / "dw.json").read_text())
    assert meta["quantization"]["kept_float"]["op_types"] == ["depthwise"]
    n_dw = meta["quantization"]["kept_float"]["nodes"]["depthwise"]
    assert n_dw > 0

    def dequantized_inputs(path):  # convs whose weight goes through DequantizeLinear
        g = onnx.load(str(path)).graph
        dq = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
        return sum(n.op_type == "Conv" and n.input[1] in dq for n in g.node)

    assert dequantized_inputs(tmp_path / "all.onnx") - dequantized_inputs(tmp_path / "dw.onnx") == n_dw
    with pytest.raises(ConfigError, match="int8_exclude.*'Foo'"):
        export_task(task, train_cfg, cls_settings(int8_exclude=["Foo"], **kw), tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="export.format=onnx"):
        export_task(task, train_cfg, cls_settings(format="torchscript", quantize="int8"), tmp_path / "x.pt")


@pytest.mark.slow
def test_int8_bad_keys_are_refused_by_name(cls_ckpt, tmp_path):  # noqa: F811
    import subprocess
    import sys

    for overrides, expected in (
        (
            ["export.quantize=int8", "export.int8_max_drop_top1=abc"],
            "export.int8_max_drop_top1='abc': expected a number",
        ),
        (["export.quantize=int4"], "export.quantize='int4': expected null or 'int8'"),
    ):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mbtasks",
                "mode=export",
                f"ckpt_path={cls_ckpt}",
                *overrides,
                f"export.output={tmp_path / 'm.onnx'}",
                f"hydra.run.dir={tmp_path / 'run'}",
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2 and expected in proc.stderr + proc.stdout, proc.stderr[-1500:]
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_int8_default_keeps_the_embeddings_last_layer_float(emb_ckpt, cls_ckpt, tmp_path):  # noqa: F811
    # export.int8_exclude=null (the default): the task's measured choice; [] quantizes everything
    def kept(ckpt, name, **extra):
        task, train_cfg = load_task(ckpt)
        max_drop = TASKS[task.name][2]
        settings = export_settings(
            task.name,
            end_to_end=False,
            quantize="int8",
            calibration_images=4,
            speed_batch=2,
            **{max_drop: 1.0},
            **extra,
        )
        export_task(task, train_cfg, settings, tmp_path / f"{name}.onnx")
        return json.loads((tmp_path / f"{name}.json").read_text())["quantization"]["kept_float"]

    emb = kept(emb_ckpt, "emb")
    assert emb["op_types"] == ["Gemm"] and emb["nodes"]["Gemm"] >= 1
    assert kept(emb_ckpt, "emb_all", int8_exclude=[])["op_types"] == []
    assert kept(cls_ckpt, "cls")["op_types"] == []
