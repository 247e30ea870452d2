"""INT8 network graphs: onnxruntime static quantization (QDQ, per-channel weights).

Only the network is quantized: every node after its last weighted layer (softmax, L2
normalisation, the detector's box decoding) stays float, and so does what
:func:`~mbtasks.export.onnx_pipeline.wrap_network` adds around it (resize, normalise, NMS); a task may
keep more float (``output_layers``: the layers writing its answers; an op type). Activations are
unsigned and weights signed 8-bit, weights in the 7-bit range by default (``reduce_range``: x86 CPUs
without VNNI sum u8 x s8 products in saturating int16); MinMax calibration on real images.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from mbtasks.errors import ConfigError
from mbtasks.export.formats import quiet_exporters

# layers with weights: where quantization pays (int8 GEMM) and what the float tail comes after
WEIGHTED = ("Conv", "Gemm", "MatMul")
# keyword for int8_exclude: convolutions with one group per input channel
DEPTHWISE = "depthwise"
# keyword for int8_exclude: the weighted layers with no weighted layer downstream, the ones that write the
# network's answers (the classifier, the detector's box-regression and score convolutions)
OUTPUT_LAYERS = "output_layers"
KEYWORDS = (DEPTHWISE, OUTPUT_LAYERS)


def _weights_shapes(model) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def is_depthwise(node, shapes: dict[str, tuple[int, ...]]) -> bool:
    """A ``Conv`` with ``group`` == its input channels > 1 (weight ``(C, 1, k, k)``)."""
    if node.op_type != "Conv":
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
    return group > 1 and weight is not None and weight[1] == 1


def float_tail(model) -> list[str]:
    """Names of the nodes with no weighted layer downstream: the post-processing the network
    ends with (softmax, normalisation, box decoding), kept in float."""
    feeds = _feeds_weights(model)
    return [n.name for n in model.graph.node if not feeds[n.name]]


def output_layers(model) -> list[str]:
    """Names of the weighted layers (``Conv``, ``Gemm``, ``MatMul``) with no weighted layer downstream:
    the layers that write the network's answers (class scores, box offsets, embeddings)."""
    feeds = _feeds_weights(model)
    consumers = _consumers(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type in WEIGHTED and not any(feeds[c.name] for out in n.output for c in consumers.get(out, []))
    ]


def _consumers(model) -> dict[str, list]:
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _feeds_weights(model) -> dict[str, bool]:
    """``{node name: whether the node is a weighted layer or has one downstream}``."""
    consumers = _consumers(model)
    feeds_weights: dict[str, bool] = {}

    def feeds(node) -> bool:  # the graph is topologically sorted: recursion depth is the tail's length at most
        if node.name not in feeds_weights:
            feeds_weights[node.name] = node.op_type in WEIGHTED or any(
                feeds(c) for out in node.output for c in consumers.get(out, [])
            )
        return feeds_weights[node.name]

    for node in reversed(model.graph.node):  # from the outputs back: memoised, no deep recursion
        feeds(node)
    return feeds_weights


def excluded_nodes(model, exclude: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Nodes kept in float: the float tail, plus every node of an op type in ``exclude`` (``Conv``,
    ``Add``, ...; ``depthwise`` = depthwise convolutions; ``output_layers`` = :func:`output_layers`).

    Returns:
        ``(node names, {excluded kind: count})``.
    """
    op_types = {n.op_type for n in model.graph.node}
    for kind in exclude:
        if kind not in KEYWORDS and kind not in op_types:
            raise ConfigError(
                f"export.int8_exclude: {kind!r} is not an op type of this network; expected "
                f"one of {list(KEYWORDS)} or of its op types {sorted(op_types)}"
            )
    shapes = _weights_shapes(model)
    names = set(float_tail(model))
    counts = {"float_tail": len(names)}
    outputs = set(output_layers(model))
    for kind in exclude:
        if kind == DEPTHWISE:
            chosen = [n.name for n in model.graph.node if is_depthwise(n, shapes)]
        elif kind == OUTPUT_LAYERS:
            chosen = [n.name for n in model.graph.node if n.name in outputs]
        else:
            chosen = [n.name for n in model.graph.node if n.op_type == kind]
        counts[kind] = len(chosen)
        names.update(chosen)
    return [n.name for n in model.graph.node if n.name in names], counts


def name_nodes(model) -> None:
    """Give every unnamed node a unique name (exclusion lists refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


# how the graph is quantized by default (keys of ``recipe`` in :func:`quantize_network`)
RECIPE = {
    "format": "QDQ",
    "per_channel": True,
    "reduce_range": True,  # see export.int8_reduce_range
    "activations": "uint8",
    "weights": "int8",
    "calibration_method": "MinMax",
    "preprocess": True,
    "extra_options": {},
}


def quantize_network(
    src: Path,
    dst: Path,
    batches: Iterable[np.ndarray],
    input_name: str = "images",
    exclude: Sequence[str] = (),
    recipe: dict | None = None,
) -> dict:
    """Write the QDQ INT8 version of the network graph ``src`` to ``dst``.

    Args:
        src, dst: ONNX network graphs (float ``images (N, 3, H, W)`` in).
        batches: calibration inputs, normalised float32 ``(n, 3, H, W)`` each.
        exclude: op types (or ``depthwise``) kept in float besides the float tail.
        recipe: keys of :data:`RECIPE` to change (a benchmark's variants).

    Returns:
        what was done, for the metadata: format, types, calibration, excluded node counts.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, data: Iterable[np.ndarray], single: bool) -> None:
            # onnxruntime's histogram calibrators stack every batch's outputs: they need equal batch sizes
            self.data: Iterator[np.ndarray] = (
                (x[i : i + 1] for x in data for i in range(len(x))) if single else iter(data)
            )
            self.count = 0

        def get_next(self):
            x = next(self.data, None)
            if x is None:
                return None
            self.count += len(x)
            return {input_name: np.ascontiguousarray(x, dtype=np.float32)}

    r = {**RECIPE, **(recipe or {})}
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    # shape inference + graph optimisation first, as onnxruntime's quantization guide advises
    prep = dst.with_name(dst.stem + "-prep.onnx")
    try:
        with quiet_exporters():  # onnxruntime.quantization and onnx log each pass
            # onnxruntime's symbolic shape inference fails on some exported graphs; ONNX's own is enough here
            if r["preprocess"]:
                quant_pre_process(str(src), str(prep), skip_symbolic_shape=True)
            model = onnx.load(str(prep if r["preprocess"] else src))
            name_nodes(model)
            onnx.save(model, str(prep))
            nodes, counts = excluded_nodes(model, list(exclude))
            reader = Reader(batches, single=r["calibration_method"] != "MinMax")
            quantize_static(
                str(prep),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ if r["format"] == "QDQ" else QuantFormat.QOperator,
                per_channel=r["per_channel"],
                reduce_range=r["reduce_range"],
                activation_type=types[r["activations"]],
                weight_type=types[r["weights"]],
                calibrate_method=getattr(CalibrationMethod, r["calibration_method"]),
                nodes_to_exclude=nodes,
                extra_options=dict(r["extra_options"]),
            )
    finally:
        prep.unlink(missing_ok=True)
    return {
        "format": r["format"],
        "weights": f"{r['weights']}, "
        + ("per channel" if r["per_channel"] else "per tensor")
        + (", 7-bit range (reduce_range)" if r["reduce_range"] else ""),
        "activations": f"{r['activations']}, per tensor",
        "reduce_range": r["reduce_range"],
        "calibration_method": r["calibration_method"],
        "calibration_images": reader.count,
        "kept_float": {"op_types": list(exclude), "nodes": counts},
    }
