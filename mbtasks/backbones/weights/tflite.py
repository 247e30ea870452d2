"""Google's MobileNet V1 TFLite files (uint8-quantized or float32) as our classifier.

The ``tflite`` package (pure Python, flatbuffers) reads the file. The operators are walked in
order: ``CONV_2D``, 13 x (``DEPTHWISE_CONV_2D``, ``CONV_2D``), ``AVERAGE_POOL_2D``, the logits
``CONV_2D`` (or ``FULLY_CONNECTED``), then ``RESHAPE`` / ``SOFTMAX`` (ignored).

- Weights are dequantised as ``(q - zero_point) * scale`` (one scale per tensor, or one per
  output channel along the tensor's quantized dimension); biases as ``int32 * scale``, the bias
  tensor's own scale (``s_input * s_weight``). Float32 tensors are taken as they are; a
  ``DEQUANTIZE`` op in front of a weight (float16 files) is followed to its constant.
- Layouts: conv ``[O, kH, kW, I]`` (OHWI) -> OIHW; depthwise ``[1, kH, kW, C]`` -> ``[C, 1, kH, kW]``.
- BatchNorm is folded into the convolutions: each of our BatchNorms becomes the identity
  (weight 1, mean 0, variance ``1 - eps``) shifted by the conv's bias.
- The 1001 logits lose the background class 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mbtasks.backbones.mobilenet_v1 import V1_ARCH
from mbtasks.backbones.weights import TF_MEAN, TF_STD, Converted
from mbtasks.backbones.weights.tf_graph import TORCH_BN_EPS, ConvBN, assemble_classifier

# TFLite's TensorType -> numpy dtype of the raw buffer (the types Google's MobileNets use)
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8}
# ActivationFunctionType -> backbone.act
ACTS = {1: "relu", 3: "relu6"}
V1_CONVS = 27  # stem + 13 x (depthwise, pointwise)


def read_model(path: str | Path):
    """The file's bytes and its ``tflite.Model``; ``ValueError`` naming the file if it is not TFLite."""
    import tflite

    data = Path(path).read_bytes()
    # a TFLite flatbuffer: root offset, then the file identifier "TFL3"
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise ValueError("no subgraph")
    except Exception as e:  # a corrupt flatbuffer raises anything from struct to IndexError
        raise ValueError(f"{path}: unreadable TFLite flatbuffer ({e})") from None
    return data, model


class TFLiteGraph:
    """Operators and constant tensors of a TFLite model's first subgraph."""

    def __init__(self, path: str | Path) -> None:
        import tflite

        self.path = path
        self.data, self.model = read_model(path)
        self.graph = self.model.Subgraphs(0)
        names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        self.ops = []  # (op name, operator)
        self.source_of: dict[int, int] = {}  # DEQUANTIZE output -> its constant input
        for i in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(i)
            code = self.model.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            if name == "DEQUANTIZE" and self.is_constant(int(op.Inputs(0))):
                self.source_of[int(op.Outputs(0))] = int(op.Inputs(0))
                continue
            self.ops.append((name, op))

    def is_constant(self, index: int) -> bool:
        buf = self.model.Buffers(self.graph.Tensors(index).Buffer())
        return buf is not None and (buf.DataLength() > 0 or buf.Offset() > 1)

    def tensor(self, index: int) -> np.ndarray:
        """A constant tensor as float32 (dequantised when it is quantized)."""
        index = self.source_of.get(index, index)
        t = self.graph.Tensors(index)
        name = t.Name().decode(errors="replace")
        dtype = DTYPES.get(t.Type())
        if dtype is None:
            raise ValueError(f"{self.path}: tensor {name!r} has TFLite type {t.Type()}, which is not supported")
        buf = self.model.Buffers(t.Buffer())
        if buf.Offset() > 1:  # stored after the flatbuffer (large models)
            raw = np.frombuffer(self.data, np.uint8, buf.Size(), buf.Offset())
        else:
            raw = buf.DataAsNumpy()
        if isinstance(raw, int) or raw.size == 0:
            raise ValueError(f"{self.path}: tensor {name!r} has no data; not a constant weight")
        shape = [int(d) for d in t.ShapeAsNumpy()]
        values = raw.view(dtype).reshape(shape)
        if values.dtype.kind == "f":
            return values.astype(np.float32)
        q = t.Quantization()
        if q is None or q.ScaleLength() == 0:
            raise ValueError(f"{self.path}: integer tensor {name!r} has no quantization scale")
        scale = q.ScaleAsNumpy().astype(np.float64)
        zero = q.ZeroPointAsNumpy().astype(np.float64) if q.ZeroPointLength() else np.zeros_like(scale)
        if scale.size > 1:  # per-axis: broadcast along the quantized dimension
            axis_shape = [1] * values.ndim
            axis_shape[q.QuantizedDimension()] = scale.size
            scale, zero = scale.reshape(axis_shape), zero.reshape(axis_shape)
        return ((values.astype(np.float64) - zero) * scale).astype(np.float32)

    def options(self, op, cls):
        """The operator's builtin options as a ``tflite.<cls>`` table."""
        table = op.BuiltinOptions()
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def input_size(self) -> int:
        shape = self.graph.Tensors(int(self.graph.Inputs(0))).ShapeAsNumpy()
        return int(shape[1])


def convert_tflite(path: str | Path) -> Converted:
    """Convert a MobileNet V1 ImageNet TFLite file (uint8-quantized or float32) to our classifier.

    Args:
        path: a ``.tflite`` flatbuffer of Google's MobileNet V1 (any width and input size).

    Returns:
        :class:`Converted` with ``bn_folded=True`` (every BatchNorm the identity plus the folded
        bias), ``padding="tf_same"``, the activation the file fuses (``relu6``), TF's
        ``x / 127.5 - 1`` normalisation, the width from the stem's channels and the input size.

    Raises:
        ValueError: not a TFLite file, not the MobileNet V1 operator sequence (naming what is
            missing or unexpected), or shapes no width of ours fits.
    """
    import tflite

    g = TFLiteGraph(path)
    seq = [name for name, _ in g.ops]
    convs = [(name, op) for name, op in g.ops if name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    unexpected = sorted(
        set(seq)
        - {
            "CONV_2D",
            "DEPTHWISE_CONV_2D",
            "AVERAGE_POOL_2D",
            "FULLY_CONNECTED",
            "RESHAPE",
            "SOFTMAX",
            "SQUEEZE",
            "QUANTIZE",
            "DEQUANTIZE",
        }
    )
    if unexpected:
        raise ValueError(
            f"{path}: operators {unexpected} are not in MobileNet V1 (only V1 TFLite files convert; a V2 has ADD)"
        )
    expected = ["CONV_2D"] + ["DEPTHWISE_CONV_2D", "CONV_2D"] * 13
    got = [name for name, _ in convs[:V1_CONVS]]
    if got != expected or "AVERAGE_POOL_2D" not in seq:
        where = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), len(got))
        missing = "AVERAGE_POOL_2D" if got == expected else f"{expected[where]} (conv {where})"
        raise ValueError(
            f"{path}: operator {missing} missing; not a MobileNet V1 TFLite file "
            f"(operators: {', '.join(seq[:8])}{'...' if len(seq) > 8 else ''})"
        )
    pool = seq.index("AVERAGE_POOL_2D")
    logits = [(name, op) for name, op in g.ops[pool + 1 :] if name in ("CONV_2D", "FULLY_CONNECTED")]
    if not logits:
        raise ValueError(
            f"{path}: operator CONV_2D (logits after AVERAGE_POOL_2D) missing; not a MobileNet V1 TFLite file"
        )

    strides = [2] + [s for _, stride in V1_ARCH for s in (stride, 1)]
    layers, acts = [], set()
    for (name, op), stride in zip(convs[:V1_CONVS], strides, strict=True):
        if op.InputsLength() < 3 or op.Inputs(2) < 0:
            raise ValueError(f"{path}: a {name} has no bias; expected BatchNorm folded into every conv")
        w, b = g.tensor(int(op.Inputs(1))), g.tensor(int(op.Inputs(2)))
        cls = tflite.DepthwiseConv2DOptions if name == "DEPTHWISE_CONV_2D" else tflite.Conv2DOptions
        opts = g.options(op, cls)
        if opts.Padding() != tflite.Padding.SAME:
            raise ValueError(f"{path}: a {name} has VALID padding; MobileNet V1 files use SAME")
        if (opts.StrideH(), opts.StrideW()) != (stride, stride):
            raise ValueError(
                f"{path}: conv {len(layers)} ({name}) has stride {opts.StrideH()}, MobileNet V1's has {stride}"
            )
        acts.add(opts.FusedActivationFunction())
        # OHWI -> OIHW; depthwise [1, kH, kW, C] -> [C, 1, kH, kW] (multiplier 1)
        w = w.transpose(3, 0, 1, 2) if name == "DEPTHWISE_CONV_2D" else w.transpose(0, 3, 1, 2)
        ones = np.ones_like(b)
        # BN folded in the file: ours is the identity, (x - 0) / sqrt((1 - eps) + eps) * 1 + bias
        layers.append(ConvBN(w, ones, b, np.zeros_like(b), ones - TORCH_BN_EPS))
    if len(acts) != 1 or next(iter(acts)) not in ACTS:
        raise ValueError(
            f"{path}: fused activations {sorted(acts)} (TFLite codes); expected one of RELU or RELU6 throughout"
        )
    act = ACTS[acts.pop()]

    _, op = logits[0]
    w = g.tensor(int(op.Inputs(1)))  # [1001, 1, 1, C] or [1001, C]
    b = g.tensor(int(op.Inputs(2))) if op.InputsLength() > 2 and op.Inputs(2) >= 0 else np.zeros(w.shape[0])
    w = w.reshape(w.shape[0], -1)
    if w.shape[0] != 1001:
        raise ValueError(f"{path}: {w.shape[0]} logits, expected ImageNet's 1001 (0 = background)")
    stem_channels = layers[0].weight.shape[0]
    state, width = assemble_classifier(
        "MobileNetV1", stem_channels, lambda prefixes: layers, w[1:], b[1:], str(path), act=act
    )
    return Converted(
        state_dict=state,
        arch="MobileNetV1",
        width=width,
        image_size=g.input_size(),
        act=act,
        padding="tf_same",
        mean=TF_MEAN,
        std=TF_STD,
        bn_folded=True,
        source=str(path),
        notes=[
            "TFLite MobileNet V1: weights dequantised, BatchNorm folded (each BN is the identity "
            "plus the conv's bias), background logit dropped"
        ],
    )
