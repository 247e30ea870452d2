"""End-to-end ONNX graphs: raw uint8 pixels in, final answers out, no code around the session.

A network graph (a task's ``tasks/<name>/export.py``, input ``images (N, 3, S, S)`` float32, written by
the torch exporter) is wrapped by two small graphs of plain ONNX operators:

- **preprocessing**, built here: ``pixels (N, H, W, 3) uint8 RGB`` -> ``images``: ``Resize`` (bilinear,
  half-pixel centres, no antialiasing, float: the values ``mode=predict``'s
  :func:`mbtasks.export.torch_pipeline.resize_pixels` computes, up to float32 rounding), optional
  centre crop, ``(x / 255 - mean) / std``;
- **the task's tail**, appended by the task (``TaskExport.onnx_tail``) through an :class:`OnnxTail`:
  nodes from the network's outputs to the final answers (top-k, NMS...), optional scalar inputs and
  the outputs it declares; no tail: the network's outputs as they are.

:func:`wrap_network` only appends nodes around the network's, so any network graph with the same
input and outputs can be wrapped: a quantized (QDQ INT8) one included, which keeps pre/post-processing
in float.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mbtasks.export.preprocessing import Preprocessing

PIXELS = "pixels"
NETWORK_INPUT = "images"


class _Graph:
    """Appends nodes with unique names under a prefix (``pre/``, ``post/``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes, self.inits, self.count = prefix, [], [], 0

    def const(self, value, dtype=None) -> str:
        name = f"{self.prefix}c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, n_out: int = 1, **attrs):
        self.count += 1
        outs = [out] if out else [f"{self.prefix}{op_type.lower()}{self.count}_{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, name=f"{self.prefix}{op_type}{self.count}", **attrs)
        )
        return outs[0] if n_out == 1 else outs


def preprocess_nodes(g: _Graph, pre: Preprocessing, pixels: str = PIXELS, out: str = NETWORK_INPUT) -> None:
    """``pixels (N, H, W, 3) uint8`` -> ``out (N, 3, S, S)`` float32 normalised."""
    # NCHW while still uint8 (a quarter of the bytes to move), then float for the resize
    x = g.op("Cast", g.op("Transpose", pixels, perm=[0, 3, 1, 2]), to=TensorProto.FLOAT)
    # sizes for all four axes (no ``axes`` attribute: onnxruntime's transpose optimizer, which runs on
    # quantized graphs, mis-rewrites a Resize that has one)
    resize = dict(mode="linear", coordinate_transformation_mode="half_pixel", antialias=0)
    s = pre.size
    shape = g.op("Shape", x)
    nc = g.op("Slice", shape, g.const([0], np.int64), g.const([2], np.int64))
    if pre.stretch:
        x = g.op("Resize", x, "", "", g.op("Concat", nc, g.const([s, s], np.int64), axis=0), **resize)
    else:
        # albumentations SmallestMaxSize: scale = max_size / min(H, W); side = max(1, round(side * scale))
        # in float64 with Python's round half to even (ONNX Round's rule too)
        hw = g.op("Slice", shape, g.const([2], np.int64), g.const([4], np.int64))
        hw64 = g.op("Cast", hw, to=TensorProto.DOUBLE)
        scale = g.op(
            "Div",
            g.const(float(pre.shorter_side), np.float64),
            g.op("ReduceMin", hw64, g.const([0], np.int64), keepdims=1),
        )
        sizes = g.op("Max", g.op("Round", g.op("Mul", hw64, scale)), g.const(1.0, np.float64))
        sizes = g.op("Cast", sizes, to=TensorProto.INT64)
        x = g.op("Resize", x, "", "", g.op("Concat", nc, sizes, axis=0), **resize)
        # CenterCrop: start = (side - size) // 2
        start = g.op("Div", g.op("Sub", sizes, g.const([s, s], np.int64)), g.const(2, np.int64))
        x = g.op("Slice", x, start, g.op("Add", start, g.const([s, s], np.int64)), g.const([2, 3], np.int64))
    # not rounded to uint8: mode=predict resizes the same way (torch_pipeline.resize_pixels), in float
    x = g.op("Mul", x, g.const(1 / 255.0, np.float32))
    x = g.op("Sub", x, g.const(np.reshape(pre.mean, (1, 3, 1, 1)), np.float32))
    g.op("Div", x, g.const(np.reshape(pre.std, (1, 3, 1, 1)), np.float32), out=out)


def _rename(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Rename values of ``graph`` (not inside function bodies, which have their own scope)."""
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for value in list(graph.output) + list(graph.value_info):
        value.name = names.get(value.name, value.name)


class OnnxTail(_Graph):
    """What a task's ONNX tail (``TaskExport.onnx_tail``) appends after the network's nodes.

    Attributes:
        pixels: the name of the end-to-end input ``(N, H, W, 3)`` uint8 (its shape scales boxes back).
        size: the network's input side ``S``.
        network_outputs: the network's output name -> its dims (``int`` or a symbolic ``str``).
    """

    def __init__(self, network: onnx.ModelProto, size: int) -> None:
        super().__init__("post/")
        self.pixels, self.size = PIXELS, int(size)
        self.network_outputs = {
            o.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in network.graph.output
        }
        self.inputs: list = []
        self.outputs: list = []
        self.renames: dict[str, str] = {}

    def network_output(self, name: str) -> str:
        """The network's output ``name`` renamed ``net/<name>``, so the tail's final output can take the name."""
        self.renames[name] = f"net/{name}"
        return self.renames[name]

    def scalar_input(self, name: str, default: float) -> str:
        """An optional float32 scalar graph input ``name`` (its initializer ``default`` is used when not fed)."""
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, []))
        self.inits.append(numpy_helper.from_array(np.asarray(float(default), np.float32), name))
        return name

    def cast(self, x: str, dtype) -> str:
        """``x`` cast to the numpy ``dtype`` (``np.float32``, ``np.int64``...)."""
        return self.op("Cast", x, to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def output(self, name: str, dtype, shape: list) -> None:
        """Declare the graph output ``name`` (a value some node writes), of numpy ``dtype`` and ``shape``."""
        self.outputs.append(
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)
        )


def wrap_network(
    network: onnx.ModelProto, pre: Preprocessing, tail: Callable[[OnnxTail], None] | None = None, name: str = "network"
) -> onnx.ModelProto:
    """The end-to-end model: ``pixels`` -> preprocessing -> ``network`` -> the task's tail.

    Args:
        network: a model with input ``images (N, 3, S, S)`` float32 and the task's outputs, float or quantized.
        pre: the checkpoint's preprocessing (``S == pre.size``).
        tail: appends the task's post-processing to an :class:`OnnxTail` (``TaskExport.onnx_tail`` with its
            settings bound); None: the network's outputs as they are.
        name: the graph's name (``mbtasks_<name>_end_to_end``).

    Returns:
        a model with input ``pixels (N, H, W, 3)`` uint8 (any ``N``, ``H``, ``W``), the tail's optional inputs
        and its outputs.
    """
    net = onnx.shape_inference.infer_shapes(network)
    pre_g, post_g = _Graph("pre/"), OnnxTail(net, pre.size)
    preprocess_nodes(pre_g, pre)
    if tail is not None:
        tail(post_g)
    _rename(net.graph, post_g.renames)
    graph = helper.make_graph(
        pre_g.nodes + list(net.graph.node) + post_g.nodes,
        f"mbtasks_{name}_end_to_end",
        [helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["N", "H", "W", 3]), *post_g.inputs],
        post_g.outputs or list(net.graph.output),
        initializer=pre_g.inits + list(net.graph.initializer) + post_g.inits,
        value_info=list(net.graph.value_info),
    )
    model = helper.make_model(
        graph,
        opset_imports=list(net.opset_import),
        ir_version=net.ir_version,
        functions=list(net.functions),
        producer_name="mbtasks",
    )
    onnx.checker.check_model(model, full_check=True)
    return model
