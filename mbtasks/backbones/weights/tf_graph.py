"""TF-slim MobileNet frozen graphs (``.pb``) as our classifier, read without TensorFlow.

A frozen GraphDef holds every variable as a ``Const`` node; the ``tensorboard`` package parses
the protobuf (``tensorboard.compat.proto.graph_pb2.GraphDef``) and turns a node into an array
(``tensorboard.util.tensor_util.make_ndarray``). Nodes are read by their TF-slim names:

- V1 (Howard et al. 2017, arXiv:1704.04861): ``MobilenetV1/Conv2d_0``, then
  ``MobilenetV1/Conv2d_<i>_depthwise`` / ``_pointwise`` for i = 1..13;
- V2 (Sandler et al. 2018, arXiv:1801.04381): ``MobilenetV2/Conv``, ``MobilenetV2/expanded_conv``,
  ``MobilenetV2/expanded_conv_<i>/{expand,depthwise,project}`` for i = 1..16, ``MobilenetV2/Conv_1``;

each with ``weights`` (``depthwise_weights``) and ``BatchNorm/{gamma,beta,moving_mean,
moving_variance}``, and ``<scope>/Logits/Conv2d_1c_1x1/{weights,biases}`` (1001 classes, 0 =
background). Nodes outside the network's scope (a retrain layer on top) are ignored.

:func:`assemble_classifier` (shared with :mod:`.tflite`) puts converted layers into our
classifier's state dict, checking every shape against the architecture built for the width.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mbtasks.backbones.blocks import ConvBNAct, round_channels
from mbtasks.backbones.mobilenet_v1 import MobileNetV1
from mbtasks.backbones.mobilenet_v2 import MobileNetV2
from mbtasks.backbones.weights import TF_MEAN, TF_STD, Converted
from mbtasks.models.classifier import Classifier, ClassifierHead

# TF-slim's batch_norm epsilon (read from the graph where the BatchNorm's ``add/y`` node is there)
TF_BN_EPS = 1e-3
# ours: torch's BatchNorm2d default
TORCH_BN_EPS = 1e-5
# width multipliers Google published, tried first when the stem's channels fit several
PUBLISHED_WIDTHS = (1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4)
DEFAULT_IMAGE_SIZE = 224
ARCHS = {"MobilenetV1": "MobileNetV1", "MobilenetV2": "MobileNetV2"}


@dataclass
class ConvBN:
    """One of our ``ConvBNAct`` layers: conv weight ``(O, I / groups, kH, kW)`` and BN parameters ``(O,)``."""

    weight: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray


def build_classifier(arch: str, width: float, act: str = "relu6", padding: str = "tf_same") -> nn.Module:
    """Our ``Classifier(backbone, ClassifierHead(C, 1000))`` on the meta device (shapes only, no memory)."""

    cls = {"MobileNetV1": MobileNetV1, "MobileNetV2": MobileNetV2}[arch]
    with torch.device("meta"):
        backbone = cls(width, act=act, padding=padding)
        return Classifier(backbone, ClassifierHead(backbone.num_features, 1000))


def layer_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of the model's ``ConvBNAct`` layers (``backbone.stem``...), in forward order."""

    return [name for name, m in model.named_modules() if isinstance(m, ConvBNAct)]


def candidate_widths(stem_channels: int, stem: int = 32) -> list[float]:
    """Width multipliers whose stem has ``stem_channels`` channels: published ones first, then the ratio."""

    out = [w for w in PUBLISHED_WIDTHS if round_channels(stem, w) == stem_channels]
    ratio = round(stem_channels / stem, 4)
    return out + ([ratio] if ratio not in out else [])


def assemble_classifier(
    arch: str,
    stem_channels: int,
    layers: Callable[[list[str]], list[ConvBN]],
    fc_weight: np.ndarray,
    fc_bias: np.ndarray,
    source: str,
    act: str = "relu6",
) -> tuple[OrderedDict[str, torch.Tensor], float]:
    """Our classifier's state dict from converted layers, for the width whose shapes all match.

    Args:
        arch: ``MobileNetV1`` / ``MobileNetV2``.
        stem_channels: output channels of the source's first conv (gives the width candidates).
        layers: called with our ``ConvBNAct`` prefixes in forward order, returns one
            :class:`ConvBN` per prefix (our layout, BN epsilon already ``1e-5``).
        fc_weight: ``(1000, C)``; fc_bias: ``(1000,)`` (background already dropped).
        source: the file, for messages.

    Returns:
        (state dict with keys ``backbone.*``, ``head.fc.{weight,bias}``; the width).

    Raises:
        ValueError: no width gives the source's shapes (naming the first mismatch).
    """
    first_error = None
    for width in candidate_widths(stem_channels):
        model = build_classifier(arch, width, act)
        prefixes = layer_prefixes(model)
        values: dict[str, np.ndarray] = {"head.fc.weight": fc_weight, "head.fc.bias": fc_bias}
        convs = layers(prefixes)
        if len(convs) != len(prefixes):
            raise ValueError(f"{source}: {len(convs)} conv layers, {arch} has {len(prefixes)}")
        for prefix, conv in zip(prefixes, convs, strict=True):
            values.update(
                {
                    f"{prefix}.0.weight": conv.weight,
                    f"{prefix}.1.weight": conv.gamma,
                    f"{prefix}.1.bias": conv.beta,
                    f"{prefix}.1.running_mean": conv.mean,
                    f"{prefix}.1.running_var": conv.var,
                }
            )
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for key, ref in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                out[key] = torch.zeros((), dtype=torch.long)
                continue
            value = values[key]
            if tuple(value.shape) != tuple(ref.shape):
                first_error = first_error or (
                    f"{source}: {key} would need shape {tuple(ref.shape)} for {arch}(width={width}) but the "
                    f"file has {tuple(value.shape)}"
                )
                break
            out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        else:
            return out, width
    raise ValueError(f"cannot convert {first_error}; no width multiplier of ours fits its layers")


def read_graph(path: str | Path):
    """Parse a GraphDef file; ``ValueError`` naming the file if it is not one."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.graph_pb2 import GraphDef

    graph = GraphDef()
    try:
        graph.ParseFromString(Path(path).read_bytes())
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path} is not a TensorFlow GraphDef (.pb): {e}") from None
    return graph


class GraphConsts:
    """The ``Const`` nodes of a frozen graph as arrays, by name; a missing one raises naming it."""

    def __init__(self, graph, path: str | Path) -> None:
        self.nodes = {node.name: node for node in graph.node}
        self.path = path

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def __getitem__(self, name: str) -> np.ndarray:
        from tensorboard.util.tensor_util import make_ndarray

        node = self.nodes.get(name)
        if node is None:
            raise ValueError(f"{self.path}: node {name!r} missing; not a TF-slim MobileNet frozen graph")
        if node.op != "Const":
            raise ValueError(
                f"{self.path}: node {name!r} is a {node.op}, not a Const; freeze the graph "
                "(variables to constants) first"
            )
        return make_ndarray(node.attr["value"].tensor)

    def get(self, name: str, default: np.ndarray) -> np.ndarray:
        return self[name] if name in self.nodes else default

    def bn_eps(self, scope: str, tower: str) -> float:
        """The epsilon of ``scope``'s BatchNorm: its ``batchnorm/add/y`` node, else TF-slim's 1e-3."""
        for name in (f"{tower}/{scope}/BatchNorm/batchnorm/add/y", f"{scope}/BatchNorm/batchnorm/add/y"):
            if name in self.nodes and self.nodes[name].op == "Const":
                return float(self[name])
        for name in (f"{tower}/{scope}/BatchNorm/FusedBatchNorm", f"{tower}/{scope}/BatchNorm/FusedBatchNormV3"):
            node = self.nodes.get(name)
            if node is not None and "epsilon" in node.attr:
                return float(node.attr["epsilon"].f)
        return TF_BN_EPS

    def conv_bn(self, scope: str, tower: str, depthwise: bool = False) -> ConvBN:
        """``scope``'s conv (HWIO -> OIHW; depthwise ``[kH, kW, C, 1]`` -> ``[C, 1, kH, kW]``) and BN."""
        if depthwise:
            w = self[f"{scope}/depthwise_weights"].transpose(2, 3, 0, 1)
        else:
            w = self[f"{scope}/weights"].transpose(3, 2, 0, 1)
        bn = f"{scope}/BatchNorm"
        mean, var = self[f"{bn}/moving_mean"], self[f"{bn}/moving_variance"]
        # TF normalises with var + 1e-3, our BatchNorm2d with var + 1e-5: adding the difference to
        # the running variance makes our (x - mean) / sqrt(var' + 1e-5) the TF output exactly.
        var = var.astype(np.float64) + (self.bn_eps(scope, tower) - TORCH_BN_EPS)
        gamma = self.get(f"{bn}/gamma", np.ones_like(mean))  # slim's scale=False has no gamma
        beta = self.get(f"{bn}/beta", np.zeros_like(mean))
        return ConvBN(w, gamma, beta, mean, var)


def tf_scopes(arch: str, scope: str, prefixes: list[str]) -> list[tuple[str, bool]]:
    """TF-slim scope and depthwise flag of each of our ``ConvBNAct`` prefixes."""
    out = []
    for prefix in prefixes:
        parts = prefix.split(".")  # backbone.stem | backbone.blocks.<i>[.conv_dw|conv_pw|...]
        if parts[1] == "stem":
            out.append((f"{scope}/Conv2d_0" if arch == "MobileNetV1" else f"{scope}/Conv", False))
            continue
        block = int(parts[2])
        if arch == "MobileNetV1":
            kind = {"conv_dw": "depthwise", "conv_pw": "pointwise"}[parts[3]]
            out.append((f"{scope}/Conv2d_{block + 1}_{kind}", kind == "depthwise"))
        elif len(parts) == 3:  # V2's final 1x1 conv (1280 channels)
            out.append((f"{scope}/Conv_1", False))
        else:
            name = "expanded_conv" if block == 0 else f"expanded_conv_{block}"
            kind = {"conv_expand": "expand", "conv_dw": "depthwise", "conv_project": "project"}[parts[3]]
            out.append((f"{scope}/{name}/{kind}", kind == "depthwise"))
    return out


def input_size(graph) -> int:
    """Height of the ``(N, H, W, 3)`` input placeholder, or 224 when it has no static shape."""
    for node in graph.node:
        if node.op == "Placeholder" and "shape" in node.attr:
            dims = [d.size for d in node.attr["shape"].shape.dim]
            if len(dims) == 4 and dims[3] == 3 and dims[1] > 0:
                return int(dims[1])
    return DEFAULT_IMAGE_SIZE


def convert_tf_graph(path: str | Path) -> Converted:
    """Convert a TF-slim MobileNet V1 or V2 ImageNet frozen graph to our classifier.

    The network is read by node name (``MobilenetV1/...`` or ``MobilenetV2/...``); other nodes (a
    retrain layer on top) are ignored. BatchNorm stays unfused, its TF epsilon folded into the
    running variance; the 1001-class logits lose the background class 0.

    Args:
        path: a frozen ``GraphDef`` (``.pb``), weights as ``Const`` nodes.

    Returns:
        :class:`Converted` with ``padding="tf_same"``, ``act="relu6"``, TF's ``x / 127.5 - 1``
        normalisation, the width from the stem's channels and the input placeholder's size.

    Raises:
        ValueError: not a GraphDef, a node missing (named), or shapes no width of ours fits.
    """
    graph = read_graph(path)
    consts = GraphConsts(graph, path)
    names = {node.name.split("/", 1)[0] for node in graph.node}
    scope = next((s for s in ARCHS if s in names), None)
    if scope is None:
        raise ValueError(
            f"{path}: node 'MobilenetV1/Conv2d_0/weights' missing (nor 'MobilenetV2/Conv/weights'); not a "
            "TF-slim MobileNet frozen graph"
        )
    arch = ARCHS[scope]
    stem = consts[f"{scope}/Conv2d_0/weights" if arch == "MobileNetV1" else f"{scope}/Conv/weights"]
    logits_w = consts[f"{scope}/Logits/Conv2d_1c_1x1/weights"]  # [1, 1, C, 1001]
    logits_b = consts[f"{scope}/Logits/Conv2d_1c_1x1/biases"]
    if logits_w.shape[-1] != 1001:
        raise ValueError(f"{path}: {logits_w.shape[-1]} logits, expected ImageNet's 1001 (0 = background)")
    fc_weight = logits_w.reshape(-1, 1001)[:, 1:].T
    fc_bias = logits_b[1:]
    tower = scope  # slim's ops (not variables) live under <scope>/<scope>/...: their BN epsilon

    def layers(prefixes: list[str]) -> list[ConvBN]:
        return [consts.conv_bn(s, tower, dw) for s, dw in tf_scopes(arch, scope, prefixes)]

    state, width = assemble_classifier(arch, int(stem.shape[-1]), layers, fc_weight, fc_bias, str(path))
    return Converted(
        state_dict=state,
        arch=arch,
        width=width,
        image_size=input_size(graph),
        act="relu6",
        padding="tf_same",
        mean=TF_MEAN,
        std=TF_STD,
        bn_folded=False,
        source=str(path),
        notes=[f"TF-slim {scope} frozen graph; BatchNorm epsilon folded into running_var; background logit dropped"],
    )
