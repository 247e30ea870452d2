"""End-to-end ONNX graphs: raw uint8 pixels in, final answers out, no code around the session.

A network graph (a task's ``tasks/<name>/export.py``, input ``images (N, 3, S, S)`` float32, written by
the torch exporter) is wrapped by two small graphs built here with plain ONNX operators:

- **preprocessing** ``pixels (N, H, W, 3) uint8 RGB`` -> ``images``: ``Resize`` (bilinear,
  half-pixel centres, no antialiasing, float: the values ``mode=predict``'s
  :func:`mbtasks.export.torch_pipeline.resize_pixels` computes, up to float32 rounding), optional
  centre crop, ``(x / 255 - mean) / std``;
- **post-processing** per task, from the network's outputs:
  classification ``probs (N, K), scores (N, k), labels (N, k)`` (top-k);
  detection ``boxes (N, D, 4), scores (N, D), labels (N, D), category_ids (N, D),
  num_detections (N,)``: the best ``topk_candidates`` (box, class) pairs, per-class
  ``NonMaxSuppression`` with the score threshold, the best ``D = max_detections`` over all
  classes, boxes scaled to the input image's pixels, rows past ``num_detections`` padded
  (boxes 0, scores 0, labels and ids -1); embedding ``embeddings (N, E)`` unchanged.

Detection's ``score_threshold`` and ``iou_threshold`` are optional graph inputs (float32 scalars)
whose defaults are the checkpoint's values. :func:`wrap_network` only appends nodes around the
network's, so any network graph with the same input and outputs can be wrapped: a quantized
(QDQ INT8) one included, which keeps pre/post-processing in float.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mbtasks.export.preprocessing import Preprocessing

PIXELS = "pixels"
NETWORK_INPUT = "images"
# the post-processing tails :func:`wrap_network` can append (a task's export names one)
POST_KINDS = ("topk", "nms", "none")


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


def classification_nodes(g: _Graph, num_classes: int, top_k: int) -> list:
    """Network output ``probs`` -> ``scores, labels`` (top-k)."""
    k = max(1, min(int(top_k), num_classes))
    g.op("TopK", "probs", g.const([k], np.int64), axis=1, largest=1, sorted=1, n_out=2)
    scores, labels = g.nodes[-1].output
    g.op("Identity", scores, out="scores")
    g.op("Identity", labels, out="labels")
    return [
        helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", num_classes]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", k]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", k]),
    ]


def detection_nodes(
    g: _Graph,
    num_anchors: int,
    num_classes: int,
    size: int,
    category_ids: list[int],
    max_detections: int,
    topk_candidates: int,
) -> list:
    """Network outputs ``scores (N, A, K)``, ``boxes (N, A, 4)`` (network pixels) -> final detections.

    Same rules as :func:`mbtasks.models.detection.postprocess.postprocess_detections`: only the best
    ``topk_candidates`` (box, class) pairs scoring above the threshold enter the per-class NMS.
    """
    a, k = num_anchors, num_classes
    flat = g.op("Reshape", "net/scores", g.const([0, a * k], np.int64))
    top_vals, top_idx = g.op("TopK", flat, g.const([min(topk_candidates, a * k)], np.int64), axis=1, n_out=2)
    # pairs outside the top candidates get score 0 (never above a threshold >= 0)
    cand = g.op("ScatterElements", g.op("Mul", flat, g.const(0.0, np.float32)), top_idx, top_vals, axis=1)
    cand = g.op("Transpose", g.op("Reshape", cand, g.const([0, a, k], np.int64)), perm=[0, 2, 1])  # (N, K, A)
    d = min(int(max_detections), a * k)
    selected = g.op(
        "NonMaxSuppression",
        "net/boxes",
        cand,
        g.const([d], np.int64),
        "iou_threshold",
        "score_threshold",
        center_point_box=0,
    )  # (M, 3): image, class, anchor
    # scatter the kept scores into a dense (N, K * A) map (-1 elsewhere), take the best D per image
    dense = g.op("Add", g.op("Mul", cand, g.const(0.0, np.float32)), g.const(-1.0, np.float32))
    dense = g.op("ScatterND", dense, selected, g.op("GatherND", cand, selected))
    best, idx = g.op(
        "TopK", g.op("Reshape", dense, g.const([0, k * a], np.int64)), g.const([d], np.int64), axis=1, n_out=2
    )
    valid = g.op("Greater", best, g.const(-0.5, np.float32))
    labels = g.op("Div", idx, g.const(a, np.int64))
    anchor = g.op("Mod", idx, g.const(a, np.int64))
    gather_idx = g.op(
        "Expand",
        g.op("Unsqueeze", anchor, g.const([2], np.int64)),
        g.op("Concat", g.op("Shape", anchor), g.const([4], np.int64), axis=0),
    )
    boxes = g.op("GatherElements", "net/boxes", gather_idx, axis=1)
    # network pixels -> input image pixels: x * W / S, y * H / S
    hw = g.op(
        "Cast",
        g.op("Slice", g.op("Shape", PIXELS), g.const([1], np.int64), g.const([3], np.int64)),
        to=TensorProto.FLOAT,
    )
    wh = g.op("Div", g.op("Gather", hw, g.const([1, 0], np.int64), axis=0), g.const(float(size), np.float32))
    boxes = g.op("Mul", boxes, g.op("Concat", wh, wh, axis=0))
    valid4 = g.op("Unsqueeze", valid, g.const([2], np.int64))
    g.op("Where", valid4, boxes, g.const(0.0, np.float32), out="boxes")
    g.op("Where", valid, best, g.const(0.0, np.float32), out="scores")
    g.op("Where", valid, labels, g.const(-1, np.int64), out="labels")
    ids = g.op("Gather", g.const(list(category_ids) or list(range(k)), np.int64), labels, axis=0)
    g.op("Where", valid, ids, g.const(-1, np.int64), out="category_ids")
    g.op(
        "ReduceSum", g.op("Cast", valid, to=TensorProto.INT64), g.const([1], np.int64), keepdims=0, out="num_detections"
    )
    return [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", d, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", d]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", d]),
        helper.make_tensor_value_info("category_ids", TensorProto.INT64, ["N", d]),
        helper.make_tensor_value_info("num_detections", TensorProto.INT64, ["N"]),
    ]


def _rename(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Rename values of ``graph`` (not inside function bodies, which have their own scope)."""
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for value in list(graph.output) + list(graph.value_info):
        value.name = names.get(value.name, value.name)


def wrap_network(
    network: onnx.ModelProto, pre: Preprocessing, post_kind: str, post: dict, name: str = "network"
) -> onnx.ModelProto:
    """The end-to-end model: ``pixels`` -> preprocessing -> ``network`` -> post-processing.

    Args:
        network: a model with input ``images (N, 3, S, S)`` float32 and the task's outputs
            (classification ``probs``; detection ``scores (N, A, K)``, ``boxes (N, A, 4)``;
            embedding ``embeddings``), float or quantized.
        pre: the checkpoint's preprocessing (``S == pre.size``).
        post_kind: the post-processing: ``topk`` (class probabilities -> top-k), ``nms`` (SSD scores and
            boxes -> per-class NMS, boxes in input-image pixels) or ``none`` (the outputs as they are).
        name: the graph's name (``mbtasks_<name>_end_to_end``).
        post: classification ``{"top_k"}``; detection ``{"num_anchors", "num_classes",
            "category_ids", "score_threshold", "nms_iou", "max_detections", "topk_candidates"}``.

    Returns:
        a model with input ``pixels (N, H, W, 3)`` uint8 (any ``N``, ``H``, ``W``) and the
        outputs listed in this module's docstring.
    """
    net = onnx.shape_inference.infer_shapes(network)
    pre_g, post_g = _Graph("pre/"), _Graph("post/")
    preprocess_nodes(pre_g, pre)
    inputs = [helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["N", "H", "W", 3])]
    extra_inits = []
    if post_kind not in POST_KINDS:
        raise ValueError(f"no end-to-end post-processing {post_kind!r}; expected one of {list(POST_KINDS)}")
    if post_kind == "topk":
        num_classes = net.graph.output[[o.name for o in net.graph.output].index("probs")]
        k = num_classes.type.tensor_type.shape.dim[1].dim_value
        outputs = classification_nodes(post_g, k, int(post["top_k"]))
    elif post_kind == "nms":
        # the final outputs take the names scores / boxes: the network's become net/scores, net/boxes
        _rename(net.graph, {"scores": "net/scores", "boxes": "net/boxes"})
        for name, key in (("score_threshold", "score_threshold"), ("iou_threshold", "nms_iou")):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, []))
            extra_inits.append(numpy_helper.from_array(np.asarray(float(post[key]), np.float32), name))
        outputs = detection_nodes(
            post_g,
            int(post["num_anchors"]),
            int(post["num_classes"]),
            pre.size,
            list(post["category_ids"]),
            int(post["max_detections"]),
            int(post["topk_candidates"]),
        )
    else:
        outputs = list(net.graph.output)
    graph = helper.make_graph(
        pre_g.nodes + list(net.graph.node) + post_g.nodes,
        f"mbtasks_{name}_end_to_end",
        inputs,
        outputs,
        initializer=pre_g.inits + list(net.graph.initializer) + post_g.inits + extra_inits,
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
