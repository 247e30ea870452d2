"""Writing and running exported networks: ONNX (torch.onnx, onnxruntime) and TorchScript.

The network graphs take one input ``images (N, 3, H, W)`` float32 with a dynamic batch ``N``; the
end-to-end ones wrap them and take ``pixels (N, H, W, 3)`` uint8. Both formats carry their
metadata inside the file: ONNX in ``metadata_props`` (key ``mbtasks`` holds the whole JSON, a few
keys are repeated flat), TorchScript as the extra file ``mbtasks.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from mbtasks.export.preprocessing import Preprocessing
from mbtasks.export.settings import FORMATS

INPUT_NAME = "images"
# the end-to-end exports' input: (N, H, W, 3) uint8 RGB
PIXELS = "pixels"
# metadata keys repeated as flat ONNX metadata_props (readable without parsing JSON)
FLAT_KEYS = ("task", "image_size", "mean", "std", "class_names", "thresholds")

Runner = Callable[[np.ndarray], list[np.ndarray]]
# third-party loggers that report every graph pass at INFO (79 of 81 lines of an export's log)
CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "onnx", "torch.onnx", "torch.export", "torch._export", "onnxruntime")


@contextlib.contextmanager
def quiet_exporters(level: int = logging.WARNING) -> Iterator[None]:
    """Raise the exporters' loggers (:data:`CHATTY_LOGGERS`) to ``level`` for the block: their
    warnings and errors still show, our own INFO lines are untouched."""
    loggers = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.level))
    try:
        yield
    finally:
        for lg, old in zip(loggers, before, strict=True):
            lg.setLevel(old)


def write_onnx(
    module: nn.Module, example: torch.Tensor, path: Path, output_names: Sequence[str], metadata: dict, opset: int = 18
) -> None:
    """Export ``module`` with torch.onnx's exporter (``torch.export`` based), batch dimension dynamic."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), quiet_exporters():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_shapes={INPUT_NAME: {0: batch}},
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    save_onnx(model, path, metadata)


def save_onnx(model, path: Path, metadata: dict) -> None:
    """Save an ONNX model with ``metadata`` as its ``metadata_props`` (replacing earlier ones)."""
    import onnx

    del model.metadata_props[:]
    for key, value in {"mbtasks": metadata, **{k: metadata[k] for k in FLAT_KEYS if k in metadata}}.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)
    onnx.save(model, str(path))


def write_torchscript(module: nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> None:
    """Trace ``module`` (shapes taken from the input at run time, so the batch stays dynamic)."""
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit is deprecated in favour of torch.export, but still the format C++/mobile runtimes load
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"mbtasks.json": json.dumps(metadata)})


def write(
    fmt: str,
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    output_names: Sequence[str],
    metadata: dict,
    opset: int = 18,
) -> None:
    if fmt == "onnx":
        write_onnx(module, example, path, output_names, metadata, opset)
    else:
        write_torchscript(module, example, path, metadata)


class Tails(Protocol):
    """A task's end-to-end tails (``TaskExport``), given its settings ``post``."""

    def onnx_tail(self, g, post: dict) -> None: ...

    def torch_end_to_end(self, pre: nn.Module, network: nn.Module, post: dict) -> nn.Module: ...


def write_end_to_end(
    fmt: str, network_path: Path, path: Path, pre: Preprocessing, tails: Tails, post: dict, metadata: dict
) -> None:
    """Wrap the exported network at ``network_path`` into the end-to-end model written to ``path``:
    ONNX by :func:`~mbtasks.export.onnx_pipeline.wrap_network` with ``tails.onnx_tail``, TorchScript by
    scripting ``tails.torch_end_to_end`` around the loaded network."""
    if fmt == "onnx":
        import onnx

        from mbtasks.export.onnx_pipeline import wrap_network

        model = wrap_network(
            onnx.load(str(network_path)),
            pre,
            lambda g: tails.onnx_tail(g, post),
            str(metadata.get("task", "network")),
        )
        save_onnx(model, path, metadata)
        return
    from mbtasks.export.torch_pipeline import Preprocess

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = torch.jit.load(str(network_path), map_location="cpu")
        module = torch.jit.script(tails.torch_end_to_end(Preprocess(pre), network, post).eval())
        torch.jit.save(module, str(path), _extra_files={"mbtasks.json": json.dumps(metadata)})


def set_metadata(fmt: str, path: Path, metadata: dict) -> None:
    """Replace the metadata stored inside an exported file."""
    if fmt == "onnx":
        import onnx

        save_onnx(onnx.load(str(path)), path, metadata)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
        torch.jit.save(module, str(path), _extra_files={"mbtasks.json": json.dumps(metadata)})


def ort_session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session of ``path`` (``threads``: intra-op threads, default onnxruntime's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_e2e_runner(fmt: str, path: Path, threads: int | None = None) -> Callable[..., dict[str, np.ndarray]]:
    """A function ``pixels (N, H, W, 3) uint8 [, score_threshold, iou_threshold] -> {output: array}``
    running an end-to-end export."""
    if fmt == "onnx":
        session = ort_session(path, threads)
        names = [o.name for o in session.get_outputs()]

        def run_onnx(pixels: np.ndarray, **thresholds) -> dict[str, np.ndarray]:
            feed = {
                PIXELS: np.ascontiguousarray(pixels, dtype=np.uint8),
                **{k: np.asarray(v, np.float32) for k, v in thresholds.items()},
            }
            return dict(zip(names, session.run(None, feed), strict=True))

        return run_onnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()
    names = json.loads(read_metadata_extra(path))["output_names"]

    def run_script(pixels: np.ndarray, **thresholds) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8)), **thresholds)
        return {name: t.numpy() for name, t in zip(names, out, strict=True)}

    return run_script


def load_runner(fmt: str, path: Path, threads: int | None = None) -> Runner:
    """A function ``images (N, 3, H, W) float32 -> [outputs...]`` running the exported file."""
    if fmt == "onnx":
        session = ort_session(path, threads)
        return lambda images: session.run(None, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(images: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        return [t.numpy() for t in (out if isinstance(out, tuple | list) else (out,))]

    return run


def read_metadata(fmt: str, path: Path) -> dict:
    """The ``mbtasks`` metadata stored inside an exported file."""
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props["mbtasks"])
    return json.loads(read_metadata_extra(path))


def is_export(path: Path) -> bool:
    """True when ``path`` is a file an mbtasks export wrote (either format, metadata inside)."""
    for fmt in FORMATS:
        try:
            meta = read_metadata(fmt, path)
        except Exception:  # noqa: BLE001 - anything unreadable as an export is not one
            continue
        if isinstance(meta, dict) and {"task", "format"} <= set(meta):
            return True
    return False


def read_metadata_extra(path: Path) -> str:
    extra = {"mbtasks.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return extra["mbtasks.json"]
