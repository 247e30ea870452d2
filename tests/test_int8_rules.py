"""What ``export.quantize=int8`` keeps float and how it quantizes the rest: the ``output_layers`` rule,
7-bit weights (``export.int8_reduce_range``), histogram calibration, the rule printed and recorded."""

import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mbtasks.export.quantize import excluded_nodes, output_layers, quantize_network
from mbtasks.modes.export import export_settings, export_task
from mbtasks.tasks import load_task
from tests.test_export import cls_ckpt, det_ckpt, leftovers  # noqa: F401 - fixtures


def two_headed(path=None, seed=0):
    """images (N, 3, 8, 8) -> conv (stem) -> relu -> {conv (scores) -> softmax, conv (boxes) -> exp}: a tiny
    detector, its two answer convolutions after a shared stem."""
    rng = np.random.default_rng(seed)

    def weight(name, shape):
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["images", "w_stem", "b_stem"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["stem"], ["feat"], name="relu"),
        helper.make_node("Conv", ["feat", "w_cls"], ["cls"], name="cls_conv"),
        helper.make_node("Softmax", ["cls"], ["scores"], name="softmax", axis=1),
        helper.make_node("Conv", ["feat", "w_box"], ["box"], name="box_conv"),
        helper.make_node("Exp", ["box"], ["boxes"], name="exp"),
    ]
    inits = [
        weight("w_stem", (16, 3, 3, 3)),
        weight("b_stem", (16,)),
        weight("w_cls", (4, 16, 1, 1)),
        weight("w_box", (4, 16, 1, 1)),
    ]
    graph = helper.make_graph(
        nodes,
        "two_headed",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4, 8, 8]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4, 8, 8]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if path is not None:
        onnx.save(model, str(path))
    return model


def calibration(sizes=(4, 4), seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (n, 3, 8, 8)).astype(np.float32) for n in sizes]


def int8_weights(path) -> dict[str, np.ndarray]:
    """The int8 weight initializers of a QDQ graph, by name."""
    model = onnx.load(str(path))
    return {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.data_type == TensorProto.INT8 and len(t.dims) == 4
    }


def test_output_layers_are_the_weighted_layers_writing_the_answers():
    model = two_headed()
    assert output_layers(model) == ["cls_conv", "box_conv"]
    names, counts = excluded_nodes(model, ["output_layers"])
    assert names == ["cls_conv", "softmax", "box_conv", "exp"]
    assert counts == {"float_tail": 2, "output_layers": 2}


def test_output_layers_stay_float_in_the_int8_graph(tmp_path):
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    two_headed(src)
    record = quantize_network(src, dst, calibration(), exclude=["output_layers"])
    assert record["kept_float"] == {"op_types": ["output_layers"], "nodes": {"float_tail": 2, "output_layers": 2}}
    model = onnx.load(str(dst))
    float_weights = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    convs = {n.name: n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    assert convs["cls_conv"] in float_weights and convs["box_conv"] in float_weights
    assert convs["stem"] not in float_weights  # the stem's weight goes through DequantizeLinear


def test_weights_use_the_7_bit_range_by_default(tmp_path):
    """x86 CPUs without VNNI saturate u8 x s8 products summed in int16 (VPMADDUBSW) with full-range weights:
    the default keeps weights within [-64, 64] (onnxruntime's reduce_range)."""
    src = tmp_path / "f.onnx"
    two_headed(src)
    quantize_network(src, tmp_path / "q.onnx", calibration())
    reduced = int8_weights(tmp_path / "q.onnx")
    assert reduced and all(np.abs(w.astype(int)).max() <= 64 for w in reduced.values())
    record = quantize_network(src, tmp_path / "full.onnx", calibration(), recipe={"reduce_range": False})
    assert record["reduce_range"] is False
    assert max(np.abs(w).max() for w in int8_weights(tmp_path / "full.onnx").values()) == 127


def test_histogram_calibration_takes_batches_of_any_size(tmp_path):
    # the last calibration batch is usually smaller; onnxruntime's Percentile / Entropy calibrators stack
    # per-batch outputs and failed on it ("inhomogeneous shape")
    src = tmp_path / "f.onnx"
    two_headed(src)
    record = quantize_network(
        src, tmp_path / "q.onnx", calibration((3, 2)), recipe={"calibration_method": "Percentile"}
    )
    assert record["calibration_method"] == "Percentile" and record["calibration_images"] == 5


def test_int8_export_prints_and_records_its_rule(cls_ckpt, tmp_path, caplog):  # noqa: F811
    task, train_cfg = load_task(cls_ckpt)
    kw = dict(end_to_end=False, quantize="int8", calibration_images=4, int8_max_drop_top1=1.0, speed_batch=2)
    with caplog.at_level(logging.INFO, logger="mbtasks"):
        export_task(task, train_cfg, export_settings("classification", **kw), tmp_path / "m.onnx")
    q = json.loads((tmp_path / "m.json").read_text())["quantization"]
    assert q["reduce_range"] is True and "7-bit" in q["weights"]
    assert q["rule"].startswith("float: every node with no Conv/Gemm/MatMul downstream")
    assert "export.int8_reduce_range=true" in q["rule"]
    assert q["rule"] in caplog.text
    assert all(np.abs(w.astype(int)).max() <= 64 for w in int8_weights(tmp_path / "m.onnx").values())
    export_task(
        task, train_cfg, export_settings("classification", int8_reduce_range=False, **kw), tmp_path / "full.onnx"
    )
    full = json.loads((tmp_path / "full.json").read_text())["quantization"]
    assert full["reduce_range"] is False and "full 8-bit range" in full["rule"]
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_detection_keeps_its_answer_convolutions_float(det_ckpt, tmp_path):  # noqa: F811
    task, train_cfg = load_task(det_ckpt)
    settings = export_settings(
        "detection", end_to_end=False, quantize="int8", calibration_images=4, speed_batch=2, int8_max_drop_map50=1.0
    )
    export_task(task, train_cfg, settings, tmp_path / "d.onnx")
    q = json.loads((tmp_path / "d.json").read_text())["quantization"]
    assert q["kept_float"]["op_types"] == ["output_layers"] and q["kept_float"]["nodes"]["output_layers"] >= 2
    assert (
        "plus the output layers (the Conv/Gemm/MatMul with none after them) (export.int8_exclude=null: task "
        "detection's default)" in q["rule"]
    )
    model = onnx.load(str(tmp_path / "d.onnx"))
    float_weights = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    float_convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in float_weights]
    assert len(float_convs) == q["kept_float"]["nodes"]["output_layers"]
