"""TF-slim frozen graphs and TFLite files convert to our classifier with the original's logits.

The files are written here in the real formats (a GraphDef of ``Const`` nodes through the
``tensorboard`` protos, a uint8 TFLite flatbuffer through ``flatbuffers`` and the ``tflite``
package's builders) from random weights of a small MobileNet V1 (width 0.25, 64 px, 1001 logits).
The reference forward is numpy in TF's own layouts (NHWC activations, HWIO weights, SAME padding),
so it shares no layout code with the converters or our modules.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mbtasks.backbones.blocks import ConvBNAct, round_channels
from mbtasks.backbones.mobilenet_v1 import V1_ARCH, MobileNetV1
from mbtasks.backbones.mobilenet_v2 import MobileNetV2
from mbtasks.backbones.weights import TF_MEAN, TF_STD
from mbtasks.backbones.weights.tf_graph import convert_tf_graph
from mbtasks.backbones.weights.tflite import convert_tflite
from mbtasks.models.classifier import Classifier, ClassifierHead

WIDTH, SIZE, CLASSES = 0.25, 64, 1001
TF_EPS = 1e-3


# --- a random TF-slim MobileNet V1 in TF layouts -------------------------------------------------


def random_tf_v1(seed: int = 0) -> dict:
    """``layers``: (TF scope, kind, stride, HWIO weight, BN dict); ``logits``: ([C, 1001], [1001])."""
    rng = np.random.default_rng(seed)
    specs = [("MobilenetV1/Conv2d_0", "conv", 2, 3, round_channels(32, WIDTH), 3)]
    c = specs[0][4]
    for i, (ch, s) in enumerate(V1_ARCH, start=1):
        out = round_channels(ch, WIDTH)
        specs += [
            (f"MobilenetV1/Conv2d_{i}_depthwise", "dw", s, c, c, 3),
            (f"MobilenetV1/Conv2d_{i}_pointwise", "conv", 1, c, out, 1),
        ]
        c = out
    layers = []
    for scope, kind, stride, cin, cout, k in specs:
        fan_in = k * k * (1 if kind == "dw" else cin)
        shape = (k, k, cin, 1) if kind == "dw" else (k, k, cin, cout)
        w = rng.normal(0, math.sqrt(2 / fan_in), shape).astype(np.float32)
        bn = {
            "gamma": rng.uniform(0.5, 1.5, cout),
            "beta": rng.normal(0, 0.2, cout),
            "moving_mean": rng.normal(0, 0.2, cout),
            "moving_variance": rng.uniform(0.5, 1.5, cout),
        }
        layers.append((scope, kind, stride, w, {k: v.astype(np.float32) for k, v in bn.items()}))
    logits_w = rng.normal(0, 1 / math.sqrt(c), (c, CLASSES)).astype(np.float32)
    logits_b = rng.normal(0, 0.5, CLASSES).astype(np.float32)
    return {"layers": layers, "logits": (logits_w, logits_b)}


def folded(net: dict) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """(kind, stride, HWIO weight, bias) with BatchNorm folded in, as TFLite files hold them."""
    out = []
    for _, kind, stride, w, bn in net["layers"]:
        scale = bn["gamma"] / np.sqrt(bn["moving_variance"] + TF_EPS)
        w = w * (scale[None, None, :, None] if kind == "dw" else scale)
        out.append((kind, stride, w.astype(np.float32), (bn["beta"] - bn["moving_mean"] * scale).astype(np.float32)))
    return out


def tf_same(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """TF's SAME padding of NHWC ``x``: total = max((ceil(n / s) - 1) * s + k - n, 0), half before."""
    pads = [(0, 0)]
    for n in x.shape[1:3]:
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, pads + [(0, 0)])


def conv_nhwc(x: np.ndarray, w: np.ndarray, stride: int, depthwise: bool) -> np.ndarray:
    """TF's Conv2D / DepthwiseConv2dNative (SAME) on NHWC ``x`` with HWIO ``w`` ([kH, kW, C, 1] depthwise)."""
    k = w.shape[0]
    x = tf_same(x, k, stride)
    h = (x.shape[1] - k) // stride + 1
    wd = (x.shape[2] - k) // stride + 1
    out = 0.0
    for dh in range(k):
        for dw in range(k):
            patch = x[:, dh : dh + stride * (h - 1) + 1 : stride, dw : dw + stride * (wd - 1) + 1 : stride, :]
            out = out + (patch * w[dh, dw, :, 0] if depthwise else patch @ w[dh, dw])
    return out


def reference_logits(x_nchw: torch.Tensor, layers: list, logits: tuple, bn: bool) -> np.ndarray:
    """The 1001 logits of the TF network (``layers`` as :func:`random_tf_v1`'s, or folded)."""
    x = x_nchw.numpy().transpose(0, 2, 3, 1).astype(np.float64)
    for layer in layers:
        if bn:
            _, kind, stride, w, p = layer
            x = conv_nhwc(x, w, stride, kind == "dw")
            x = (x - p["moving_mean"]) / np.sqrt(p["moving_variance"] + TF_EPS) * p["gamma"] + p["beta"]
        else:
            kind, stride, w, b = layer
            x = conv_nhwc(x, w, stride, kind == "dw") + b
        x = np.clip(x, 0, 6)
    return x.mean(axis=(1, 2)) @ logits[0] + logits[1]


# --- writers of the real formats -----------------------------------------------------------------


def write_graph(path, net: dict, scope: str = "MobilenetV1", extra: bool = True, skip: str | None = None) -> None:
    """A frozen GraphDef: one ``Const`` per variable (TF-slim names), an ``input`` placeholder."""
    from tensorboard.compat.proto.graph_pb2 import GraphDef
    from tensorboard.compat.proto.node_def_pb2 import NodeDef
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.types_pb2 import DT_FLOAT
    from tensorboard.util.tensor_util import make_tensor_proto

    graph = GraphDef()

    def const(name: str, value: np.ndarray) -> None:
        if name == skip:
            return
        node = NodeDef(name=name, op="Const")
        node.attr["value"].tensor.CopyFrom(make_tensor_proto(np.asarray(value, np.float32)))
        node.attr["dtype"].type = DT_FLOAT
        graph.node.append(node)

    placeholder = NodeDef(name="input", op="Placeholder")
    placeholder.attr["dtype"].type = DT_FLOAT
    placeholder.attr["shape"].shape.CopyFrom(
        TensorShapeProto(dim=[TensorShapeProto.Dim(size=d) for d in (1, SIZE, SIZE, 3)])
    )
    graph.node.append(placeholder)
    for name, kind, _, w, bn in net["layers"]:
        const(f"{name}/{'depthwise_weights' if kind == 'dw' else 'weights'}", w)
        for key, value in bn.items():
            const(f"{name}/BatchNorm/{key}", value)
    const(f"{scope}/Logits/Conv2d_1c_1x1/weights", net["logits"][0][None, None])
    const(f"{scope}/Logits/Conv2d_1c_1x1/biases", net["logits"][1])
    if extra:  # retrain.py's layer on top: not ImageNet's, must be ignored
        const("final_training_ops/weights/final_weights", np.ones((CLASSES, 2)))
    path.write_bytes(graph.SerializeToString())


def quantize(w: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Per-tensor asymmetric uint8: ``w ~ (q - zero_point) * scale``."""
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    scale = (hi - lo) / 255
    zero = int(round(-lo / scale))
    return np.clip(np.round(w / scale) + zero, 0, 255).astype(np.uint8), scale, zero


def write_tflite(path, layers: list, logits: tuple, logits_range: float = 20.0) -> tuple[list, tuple]:
    """A uint8 MobileNet V1 TFLite flatbuffer from folded HWIO layers; returns the dequantised
    layers and logits (what the file really holds)."""
    import flatbuffers
    import tflite

    b = flatbuffers.Builder(1 << 16)
    buffers: list[bytes] = [b""]
    tensors: list[tuple] = []  # (name, shape, type, scale, zero point, buffer)

    def tensor(name, shape, ttype, scale, zero, data: np.ndarray | None = None) -> int:
        buf = 0
        if data is not None:
            buffers.append(np.ascontiguousarray(data).tobytes())
            buf = len(buffers) - 1
        tensors.append((name, list(shape), ttype, scale, zero, buf))
        return len(tensors) - 1

    U8, I32 = tflite.TensorType.UINT8, tflite.TensorType.INT32
    act_scale = 6 / 255  # a ReLU6 output in uint8
    x = tensor("input", (1, SIZE, SIZE, 3), U8, 1 / 128, 128)
    in_scale = 1 / 128
    ops = []  # (opcode index, inputs, outputs, options type, options builder)
    deq_layers = []
    for i, (kind, stride, w, bias) in enumerate(layers):
        ohwi = w.transpose(3, 0, 1, 2)  # HWIO -> OHWI; depthwise [kH, kW, C, 1] -> [1, kH, kW, C]
        q, ws, wz = quantize(ohwi)
        qb = np.round(bias / (in_scale * ws)).astype(np.int32)
        wt = tensor(f"layer{i}/weights", q.shape, U8, ws, wz, q)
        bt = tensor(f"layer{i}/bias", qb.shape, I32, in_scale * ws, 0, qb)
        h = math.ceil(tensors[x][1][1] / stride)
        out = tensor(f"layer{i}/relu6", (1, h, h, len(bias)), U8, act_scale, 0)
        ops.append((1 if kind == "dw" else 0, [x, wt, bt], [out], kind, stride))
        deq_layers.append(
            (kind, stride, ((q.astype(np.float64) - wz) * ws).transpose(1, 2, 3, 0), qb * (in_scale * ws))
        )
        x, in_scale = out, act_scale
    c = tensors[x][1][3]
    pooled = tensor("pool", (1, 1, 1, c), U8, act_scale, 0)
    ops.append((2, [x], [pooled], "pool", tensors[x][1][1]))
    q, ws, wz = quantize(logits[0].T.reshape(CLASSES, 1, 1, c))
    qb = np.round(logits[1] / (act_scale * ws)).astype(np.int32)
    wt = tensor("logits/weights", q.shape, U8, ws, wz, q)
    bt = tensor("logits/biases", qb.shape, I32, act_scale * ws, 0, qb)
    lg = tensor("logits", (1, 1, 1, CLASSES), U8, 2 * logits_range / 255, 128)
    ops.append((0, [pooled, wt, bt], [lg], "logits", 1))
    shape = tensor("shape", (2,), I32, None, None, np.array([1, CLASSES], np.int32))
    flat = tensor("squeeze", (1, CLASSES), U8, 2 * logits_range / 255, 128)
    ops.append((3, [lg, shape], [flat], "reshape", None))
    prob = tensor("prob", (1, CLASSES), U8, 1 / 256, 0)
    ops.append((4, [flat], [prob], "softmax", None))
    deq_logits = (((q.astype(np.float64) - wz) * ws).reshape(CLASSES, c).T, qb * (act_scale * ws))

    def vector(start, items, prepend) -> int:
        start(b, len(items))
        for item in reversed(items):
            prepend(item)
        return b.EndVector()

    def int_vector(values) -> int:
        return b.CreateNumpyVector(np.asarray(values, np.int32))

    buf_offsets = []
    for data in buffers:
        vec = None
        if data:
            b.StartVector(1, len(data), 16)  # weights 16-byte aligned, as TFLite writes them
            b.head -= len(data)
            b.Bytes[b.head : b.head + len(data)] = data
            b.vectorNumElems = len(data)
            vec = b.EndVector()
        tflite.BufferStart(b)
        if vec is not None:
            tflite.BufferAddData(b, vec)
        buf_offsets.append(tflite.BufferEnd(b))
    tensor_offsets = []
    for name, shape_, ttype, scale, zero, buf in tensors:
        name_off, shape_off = b.CreateString(name), int_vector(shape_)
        quant = None
        if scale is not None:
            scale_off = b.CreateNumpyVector(np.array([scale], np.float32))
            zero_off = b.CreateNumpyVector(np.array([zero], np.int64))
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scale_off)
            tflite.QuantizationParametersAddZeroPoint(b, zero_off)
            quant = tflite.QuantizationParametersEnd(b)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape_off)
        tflite.TensorAddType(b, ttype)
        tflite.TensorAddBuffer(b, buf)
        tflite.TensorAddName(b, name_off)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        tensor_offsets.append(tflite.TensorEnd(b))
    op_offsets = []
    relu6, same = tflite.ActivationFunctionType.RELU6, tflite.Padding.SAME
    for opcode, inputs, outputs, kind, arg in ops:
        if kind in ("conv", "logits"):
            tflite.Conv2DOptionsStart(b)
            tflite.Conv2DOptionsAddPadding(b, same)
            tflite.Conv2DOptionsAddStrideH(b, arg)
            tflite.Conv2DOptionsAddStrideW(b, arg)
            tflite.Conv2DOptionsAddFusedActivationFunction(b, relu6 if kind == "conv" else 0)
            opts, otype = tflite.Conv2DOptionsEnd(b), tflite.BuiltinOptions.Conv2DOptions
        elif kind == "dw":
            tflite.DepthwiseConv2DOptionsStart(b)
            tflite.DepthwiseConv2DOptionsAddPadding(b, same)
            tflite.DepthwiseConv2DOptionsAddStrideH(b, arg)
            tflite.DepthwiseConv2DOptionsAddStrideW(b, arg)
            tflite.DepthwiseConv2DOptionsAddDepthMultiplier(b, 1)
            tflite.DepthwiseConv2DOptionsAddFusedActivationFunction(b, relu6)
            opts, otype = tflite.DepthwiseConv2DOptionsEnd(b), tflite.BuiltinOptions.DepthwiseConv2DOptions
        elif kind == "pool":
            tflite.Pool2DOptionsStart(b)
            tflite.Pool2DOptionsAddPadding(b, tflite.Padding.VALID)
            for add in (tflite.Pool2DOptionsAddStrideH, tflite.Pool2DOptionsAddStrideW):
                add(b, 2)
            tflite.Pool2DOptionsAddFilterHeight(b, arg)
            tflite.Pool2DOptionsAddFilterWidth(b, arg)
            opts, otype = tflite.Pool2DOptionsEnd(b), tflite.BuiltinOptions.Pool2DOptions
        elif kind == "reshape":
            new_shape = int_vector([1, CLASSES])
            tflite.ReshapeOptionsStart(b)
            tflite.ReshapeOptionsAddNewShape(b, new_shape)
            opts, otype = tflite.ReshapeOptionsEnd(b), tflite.BuiltinOptions.ReshapeOptions
        else:
            tflite.SoftmaxOptionsStart(b)
            tflite.SoftmaxOptionsAddBeta(b, 1.0)
            opts, otype = tflite.SoftmaxOptionsEnd(b), tflite.BuiltinOptions.SoftmaxOptions
        in_off, out_off = int_vector(inputs), int_vector(outputs)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, opcode)
        tflite.OperatorAddInputs(b, in_off)
        tflite.OperatorAddOutputs(b, out_off)
        tflite.OperatorAddBuiltinOptionsType(b, otype)
        tflite.OperatorAddBuiltinOptions(b, opts)
        op_offsets.append(tflite.OperatorEnd(b))
    t_vec = vector(tflite.SubGraphStartTensorsVector, tensor_offsets, b.PrependUOffsetTRelative)
    o_vec = vector(tflite.SubGraphStartOperatorsVector, op_offsets, b.PrependUOffsetTRelative)
    i_vec, out_vec, sg_name = int_vector([0]), int_vector([prob]), b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, t_vec)
    tflite.SubGraphAddOperators(b, o_vec)
    tflite.SubGraphAddInputs(b, i_vec)
    tflite.SubGraphAddOutputs(b, out_vec)
    tflite.SubGraphAddName(b, sg_name)
    subgraph = tflite.SubGraphEnd(b)
    op = tflite.BuiltinOperator
    code_offsets = []
    for code in (op.CONV_2D, op.DEPTHWISE_CONV_2D, op.AVERAGE_POOL_2D, op.RESHAPE, op.SOFTMAX):
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, code)
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddVersion(b, 1)
        code_offsets.append(tflite.OperatorCodeEnd(b))
    codes_vec = vector(tflite.ModelStartOperatorCodesVector, code_offsets, b.PrependUOffsetTRelative)
    sg_vec = vector(tflite.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    buf_vec = vector(tflite.ModelStartBuffersVector, buf_offsets, b.PrependUOffsetTRelative)
    desc = b.CreateString("mbtasks test")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, sg_vec)
    tflite.ModelAddDescription(b, desc)
    tflite.ModelAddBuffers(b, buf_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    path.write_bytes(b.Output())
    return deq_layers, deq_logits


# --- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net():
    return random_tf_v1()


def ours(converted, padding: str | None = None) -> nn.Module:
    """``Classifier(MobileNetV1(...), ClassifierHead(C, 1000))`` loaded strictly from ``converted``."""
    backbone = MobileNetV1(converted.width, act=converted.act, padding=padding or converted.padding)
    model = Classifier(backbone, ClassifierHead(backbone.num_features, 1000)).eval()
    model.load_state_dict(converted.state_dict, strict=True)
    return model


def logits_of(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).double().numpy()


def test_tf_graph_converts_exactly(net, tmp_path):
    path = tmp_path / "mobilenet_v1.pb"
    write_graph(path, net)
    c = convert_tf_graph(path)
    assert (c.arch, c.width, c.image_size, c.act, c.padding) == ("MobileNetV1", WIDTH, SIZE, "relu6", "tf_same")
    assert (c.mean, c.std, c.bn_folded) == (TF_MEAN, TF_STD, False)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    ref = reference_logits(x, net["layers"], net["logits"], bn=True)[:, 1:]  # background dropped
    got = logits_of(ours(c), x)
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    # the same weights with PyTorch's symmetric padding are a different network
    assert np.abs(logits_of(ours(c, "symmetric"), x) - ref).max() > 1e-2


def test_tflite_converts_exactly(net, tmp_path):
    path = tmp_path / "mobilenet_v1_quant.tflite"
    deq_layers, deq_logits = write_tflite(path, folded(net), net["logits"])
    c = convert_tflite(path)
    assert (c.arch, c.width, c.image_size, c.act, c.padding, c.bn_folded) == (
        "MobileNetV1",
        WIDTH,
        SIZE,
        "relu6",
        "tf_same",
        True,
    )
    model = ours(c)
    for m in model.modules():  # every BatchNorm the identity plus the folded bias
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.running_mean.any()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    ref = reference_logits(x, deq_layers, deq_logits, bn=False)[:, 1:]
    got = logits_of(model, x)
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_tf_graph_reads_v2_names(tmp_path):
    """A TF-slim V2 graph (``MobilenetV2/Conv``, ``expanded_conv[_i]/{expand,depthwise,project}``,
    ``Conv_1``) converts back to the random V2 it was written from; width 0.35 and 0.5 share a
    16-channel stem, so the deeper shapes decide."""
    torch.manual_seed(0)
    src = Classifier(MobileNetV2(0.35), ClassifierHead(1280, 1000)).eval()
    names = ["MobilenetV2/Conv", "MobilenetV2/expanded_conv/depthwise", "MobilenetV2/expanded_conv/project"]
    for i in range(1, 17):
        names += [f"MobilenetV2/expanded_conv_{i}/{k}" for k in ("expand", "depthwise", "project")]
    names.append("MobilenetV2/Conv_1")
    layers = [m for m in src.modules() if isinstance(m, ConvBNAct)]
    assert len(layers) == len(names)
    rng = np.random.default_rng(3)
    graph_layers = []
    for name, layer in zip(names, layers, strict=True):
        w = layer[0].weight.detach().numpy()
        dw = layer[0].groups > 1
        hwio = w.transpose(2, 3, 0, 1) if dw else w.transpose(2, 3, 1, 0)
        n = w.shape[0]
        bn = {
            "gamma": rng.uniform(0.5, 1.5, n),
            "beta": rng.normal(0, 0.2, n),
            "moving_mean": rng.normal(0, 0.2, n),
            "moving_variance": rng.uniform(0.5, 1.5, n),
        }
        graph_layers.append((name, "dw" if dw else "conv", 1, hwio, bn))
    fc_w = np.concatenate([np.zeros((1, 1280)), src.head.fc.weight.detach().numpy()]).T
    fc_b = np.concatenate([[0.0], src.head.fc.bias.detach().numpy()])
    path = tmp_path / "v2.pb"
    write_graph(path, {"layers": graph_layers, "logits": (fc_w, fc_b)}, scope="MobilenetV2", extra=False)
    c = convert_tf_graph(path)
    assert (c.arch, c.width, c.padding) == ("MobileNetV2", 0.35, "tf_same")
    model = Classifier(MobileNetV2(c.width, padding=c.padding), ClassifierHead(1280, 1000))
    model.load_state_dict(c.state_dict, strict=True)
    for (name, _, _, _, bn), layer in zip(
        graph_layers, [m for m in model.modules() if isinstance(m, ConvBNAct)], strict=True
    ):
        var = torch.tensor(np.float32(bn["moving_variance"]) + (1e-3 - 1e-5), dtype=torch.float32)
        assert torch.allclose(layer[1].running_var, var, rtol=1e-6, atol=0), name
    for key in ("head.fc.weight", "backbone.blocks.5.conv_dw.0.weight", "backbone.blocks.17.0.weight"):
        assert torch.equal(model.state_dict()[key], src.state_dict()[key]), key


@pytest.mark.parametrize("size", [8, 7])
def test_tf_same_stride2_conv_pads_like_tensorflow(size):
    """Even input: TF pads (0, 1, 0, 1), PyTorch's symmetric (1, 1, 1, 1); odd: both (1, 1, 1, 1)."""
    torch.manual_seed(0)
    tf, sym = ConvBNAct(4, 6, 3, 2, padding="tf_same"), ConvBNAct(4, 6, 3, 2)
    assert isinstance(tf[0], nn.Conv2d) and list(tf.state_dict()) == list(sym.state_dict())
    x = torch.randn(1, 4, size, size)
    w = tf[0].weight
    pad = (0, 1, 0, 1) if size % 2 == 0 else (1, 1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(tf[0](x), F.conv2d(F.pad(x, pad), w, stride=2), atol=1e-6)
        sym[0].weight.copy_(w)
        differs = not torch.allclose(sym[0](x), tf[0](x), atol=1e-6)
    assert differs == (size % 2 == 0)


def test_padding_keeps_state_dict_keys_and_rejects_unknown_values():
    assert list(MobileNetV1(0.25, padding="tf_same").state_dict()) == list(MobileNetV1(0.25).state_dict())
    with pytest.raises(ValueError, match=r"backbone\.padding.*'same'.*symmetric, tf_same"):
        MobileNetV1(0.25, padding="same")
    with pytest.raises(ValueError, match=r"backbone\.padding"):
        MobileNetV2(0.25, padding="tf-same")


def test_bad_files_raise_naming_the_file(net, tmp_path):
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\x00\x01 not a graph \xff" * 10)
    with pytest.raises(ValueError, match="junk.pb"):
        convert_tf_graph(junk)
    with pytest.raises(ValueError, match="junk.pb.*not a TFLite"):
        convert_tflite(junk)
    partial = tmp_path / "partial.pb"
    write_graph(partial, net, skip="MobilenetV1/Conv2d_3_pointwise/BatchNorm/moving_mean")
    with pytest.raises(ValueError, match=r"partial\.pb.*MobilenetV1/Conv2d_3_pointwise/BatchNorm/moving_mean"):
        convert_tf_graph(partial)
    other = tmp_path / "other.pb"
    write_graph(other, {"layers": [], "logits": net["logits"]}, scope="Other")
    with pytest.raises(ValueError, match=r"other\.pb.*MobilenetV1/Conv2d_0/weights"):
        convert_tf_graph(other)
