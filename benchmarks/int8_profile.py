"""Where an INT8 network graph spends its time: fp32 vs int8 throughput and onnxruntime's per-op-type
profile, for quantization variants of the graph ``export.quantize=int8`` writes.

Each target is a checkpoint (its network, calibrated on its training split as the export does) or
``v1-224`` (a V1 1.0 ImageNet classifier, 1000 classes, calibrated on ``--calibration DIR``). Each
variant is a set of :data:`mbtasks.export.quantize.RECIPE` changes plus op types kept float.

    python benchmarks/int8_profile.py v1-224 --calibration /work/shared/datasets/imagenet_sample \
        --variant default --variant all [--profile]
    python benchmarks/int8_profile.py CKPT ... --variant all

Prints a table per target (and per-op-type milliseconds per batch with ``--profile``) and writes
benchmarks/results/int8_profile.json.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import numpy as np
import torch
from common import parser, print_table, setup, time_rounds, write_results

from mbtasks.export.formats import INPUT_NAME, write_onnx
from mbtasks.export.quantize import quantize_network

# name -> (recipe changes, op types kept float or None for the task's default)
VARIANTS: dict[str, tuple[dict, list[str] | None]] = {
    "default": ({}, None),
    "all": ({}, []),
    "full_range": ({"reduce_range": False}, None),
    "no_preprocess": ({"preprocess": False}, None),
    "per_tensor": ({"per_channel": False}, None),
    "qoperator": ({"format": "QOperator"}, None),
    "act_sym": ({"extra_options": {"ActivationSymmetric": True}}, None),
    "s8s8": ({"activations": "int8"}, None),
    "u8u8": ({"weights": "uint8"}, None),
    "dedicated": ({"extra_options": {"DedicatedQDQPair": True}}, None),
    "keep_act": ({"extra_options": {"QDQKeepRemovableActivations": True}}, None),
    "force_q": ({"extra_options": {"ForceQuantizeNoInputCheck": True}}, None),
    "float_outputs": ({}, ["output_layers"]),
    "float_depthwise": ({}, ["depthwise"]),
}


def v1_224(calibration: Path, count: int):
    """The V1 1.0-224 ImageNet classifier's network graph module and normalised calibration batches."""
    from onnx_speed import compose

    from mbtasks.inference.inputs import file_batches
    from mbtasks.modes.export_metrics import folder_images

    task, cfg = compose(["backbone.pretrained=imagenet", "profile.num_classes=1000", "data.image_size=224"])
    files = [p for p, _ in folder_images(calibration)][:count]
    batches = [b.numpy() for b in file_batches(files, cfg, task.info, 32, {})]
    return task, batches, 224


def checkpoint(path: Path, count: int):
    """A checkpoint's task and calibration batches as ``export.quantize=int8`` picks them."""
    from mbtasks.inference.inputs import file_batches
    from mbtasks.modes.export_int8 import calibration_candidates, int8_datamodule
    from mbtasks.modes.export_metrics import spread
    from mbtasks.tasks import load_task

    task, cfg = load_task(path)
    items, _ = calibration_candidates(None, int8_datamodule(cfg))
    files = spread(items)[:count]
    batches = [b.numpy() for b in file_batches(files, cfg, task.info, 32, {})]
    return task, batches, int(task.info.get("image_size", 224))


def conv_kinds(path: Path) -> dict[str, str]:
    """``{conv node or output name: "depthwise" | "conv"}`` of an ONNX graph (they survive onnxruntime's
    fusions as prefixes of the fused nodes' names)."""
    import onnx

    from mbtasks.export.quantize import is_depthwise

    model = onnx.load(str(path))
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    kinds: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type == "Conv":
            kind = "depthwise" if is_depthwise(n, shapes) else "conv"
            kinds.update({n.name: kind, n.output[0]: kind})
        elif n.op_type in ("Clip", "Relu", "Add") and n.input and n.input[0] in kinds:
            kinds[n.output[0]] = kinds[n.input[0]]  # fp32 fuses the activation: the fused node has its name
    return kinds


def kind_of(node: str, kinds: dict[str, str]) -> str:
    matches = [k for k in kinds if node.startswith(k) and not node[len(k) : len(k) + 1].isdigit()]
    return kinds[max(matches, key=len)] if matches else ""


def op_profile(path: Path, x: np.ndarray, threads: int, runs: int, kinds: dict[str, str]) -> dict[str, float]:
    """Milliseconds per batch spent in each op type (onnxruntime's profiler, kernel times); convolutions
    split into depthwise and the others by the fp32 graph's ``kinds``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {INPUT_NAME: x})  # warm-up, not counted below
    Path(session.end_profiling()).unlink()
    options.enable_profiling = True
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {INPUT_NAME: x})
    trace_file = session.end_profiling()
    trace = json.loads(Path(trace_file).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            if "Conv" in op:
                op += f" ({kind_of(event['name'].removesuffix('_kernel_time'), kinds) or '?'})"
            totals[op] += event["dur"] / 1000 / runs
    Path(trace_file).unlink()
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def int8_runner(path: Path, threads: int, level: str):
    """The int8 graph in onnxruntime at graph optimisation ``level`` (all: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x})


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("targets", nargs="+", help="checkpoints, or v1-224")
    p.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS))
    p.add_argument("--calibration", type=Path, default=Path("/work/shared/datasets/imagenet_sample"))
    p.add_argument("--calibration-images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--profile", action="store_true", help="also the per-op-type profile")
    p.add_argument("--int8-level", choices=("all", "extended", "basic"), default="all", help="int8 graph optimisation")
    args = p.parse_args()
    setup(args.threads)
    from mbtasks.export.formats import load_runner
    from mbtasks.tasks import spec_of

    repeats = args.repeats or 7
    results: dict = {"batch": args.batch, "threads": args.threads}
    for target in args.targets:
        if target == "v1-224":
            task, batches, size = v1_224(args.calibration, args.calibration_images)
        else:
            task, batches, size = checkpoint(Path(target), args.calibration_images)
        spec = spec_of(task).export
        graph = spec.graph(task)
        calib = np.concatenate(batches)
        x = np.ascontiguousarray(np.resize(calib, (args.batch, *calib.shape[1:])), dtype=np.float32)
        rows, table = [], {}
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            write_onnx(graph.module, torch.from_numpy(x[:2]), fp32, graph.output_names, {"task": task.name})
            run32 = load_runner("onnx", fp32, args.threads)
            kinds = conv_kinds(fp32)
            profiles = {"fp32": op_profile(fp32, x, args.threads, 3, kinds)} if args.profile else {}
            for name in args.variant or ["default"]:
                recipe, exclude = VARIANTS[name]
                q = Path(tmp) / f"{name}.onnx"
                try:
                    quantize_network(
                        fp32, q, batches, INPUT_NAME, spec.int8_keep_float if exclude is None else exclude, recipe
                    )
                except Exception as err:  # noqa: BLE001 - a variant onnxruntime cannot make is reported, not fatal
                    print(f"{target} {name}: {type(err).__name__}: {err}")
                    continue
                run8 = int8_runner(q, args.threads, args.int8_level)
                t = time_rounds({"fp32": lambda a=run32, b=x: a(b), "int8": lambda a=run8, b=x: a(b)}, 1, repeats)
                f, i = args.batch / t["fp32"], args.batch / t["int8"]
                outs32, outs8 = run32(x[:8]), run8(x[:8])
                err = float(np.abs(outs32[0] - outs8[0]).max() / (np.abs(outs32[0]).max() + 1e-12))
                rows.append([name, f, i, i / f, err])
                table[name] = {"fp32_img_s": f, "int8_img_s": i, "ratio": i / f, "rel_max_err_out0": err}
                if args.profile:
                    profiles[name] = op_profile(q, x, args.threads, 3, kinds)
        label = f"{Path(target).parent.parent.name if target != 'v1-224' else 'v1-224'} @{size}"
        print_table(
            f"{label}: onnxruntime fp32 vs int8, batch {args.batch}, {args.threads} threads",
            ["variant", "fp32 img/s", "int8 img/s", "ratio", "rel. max err (out 0)"],
            rows,
        )
        for name, prof in profiles.items():
            total = sum(prof.values())
            print(f"  {name}: {total:.0f} ms/batch in kernels: " + ", ".join(f"{k} {v:.1f}" for k, v in prof.items()))
        results[label] = {"variants": table, "profile_ms_per_batch": profiles}
    write_results("int8_profile", results, args.out)


if __name__ == "__main__":
    main()
