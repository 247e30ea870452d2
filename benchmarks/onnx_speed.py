"""Exported models in onnxruntime: ours vs timm exported the same way, and ours vs PyTorch eager.

1. Our V1 1.0-224 classifier (the graph ``mode=export`` writes) vs timm ``mobilenetv1_100``, both
   through :func:`mbtasks.export.formats.write_onnx`, in onnxruntime at batch 32 with 2 threads
   (target: ratio ours / timm >= 1.0).
2. Every exported network of ours (classification V1 / V2 at 224, SSDLite V2 detection at 320
   with decoding, embedding V1 at 160) in onnxruntime vs the same network in PyTorch eager fp32.

    python benchmarks/onnx_speed.py [--quick] [--threads 2] [--batch 32]

Prints tables and writes benchmarks/results/onnx_speed.json.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import numpy as np
import timm
import torch
from common import build_task, parser, print_table, setup, time_rounds, write_results
from torch import nn

from mbtasks.export.formats import load_runner, write_onnx
from mbtasks.export.graphs import export_graph

# name -> (config overrides, input size)
NETWORKS = {
    "classification V1 1.0": (["backbone.act=relu6", "data.image_size=224"], 224),
    "classification V2 1.0": (["backbone=mobilenet_v2", "data.image_size=224"], 224),
    "detection SSDLite V2 1.0": (["task=detection", "backbone=mobilenet_v2", "head=ssdlite", "data.image_size=320",
                                  "profile.num_classes=80"], 320),
    "embedding V1 1.0": (["task=embedding", "data.image_size=160"], 160),
}


class Plain(nn.Module):
    """A timm classifier returning a tuple, like our graphs."""

    output_names = ("logits",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(images),)


def export(module: nn.Module, names, size: int, folder: Path, name: str, threads: int):
    path = folder / f"{name.replace(' ', '_')}.onnx"
    write_onnx(module.eval(), torch.randn(2, 3, size, size), path, names, {"task": name})
    return load_runner("onnx", path, threads)


def pytorch_fn(module: nn.Module, x: torch.Tensor):
    def run():
        with torch.inference_mode():
            module(x)
    return run


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="batch (default 32, --quick 8)")
    args = p.parse_args()
    setup(args.threads)
    batch = args.batch or (8 if args.quick else 32)
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = 1 if args.quick else 2
    results: dict = {"batch": batch, "repeats": repeats, "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ours = export_graph(build_task(NETWORKS["classification V1 1.0"][0]))
        ref = Plain(timm.create_model("mobilenetv1_100", pretrained=False))
        x = torch.randn(batch, 3, 224, 224).numpy()
        run_ours = export(ours.module, ours.output_names, 224, folder, "ours_v1", args.threads)
        run_ref = export(ref, ref.output_names, 224, folder, "timm_v1", args.threads)
        t = time_rounds({"ours": lambda: run_ours(x), "timm": lambda: run_ref(x)}, warmup, repeats)
        o, r = batch / t["ours"], batch / t["timm"]
        results["ours_v1_vs_timm_onnxruntime"] = {"ours_img_s": o, "timm_img_s": r, "ratio": o / r, "target_ratio": 1.0}
        print_table(f"onnxruntime, V1 1.0-224 classifier, batch {batch}, {args.threads} threads",
                    ["model", "img/s", "ratio"], [["ours", o, o / r], ["timm mobilenetv1_100", r, 1.0]])
        rows, table = [], {}
        for name, (overrides, size) in NETWORKS.items():
            graph = export_graph(build_task(overrides))
            runner = export(graph.module, graph.output_names, size, folder, name, args.threads)
            images = torch.randn(batch, 3, size, size)
            arr = images.numpy()
            np.testing.assert_allclose(runner(arr[:2])[0], graph.module(images[:2])[0].detach().numpy(), atol=1e-3)
            t = time_rounds({"onnxruntime": lambda r=runner, a=arr: r(a), "pytorch": pytorch_fn(graph.module, images)},
                            warmup, repeats)
            ort_s, pt_s = batch / t["onnxruntime"], batch / t["pytorch"]
            rows.append([f"{name} @{size}", ort_s, pt_s, ort_s / pt_s])
            table[name] = {"image_size": size, "onnxruntime_img_s": ort_s, "pytorch_eager_fp32_img_s": pt_s,
                           "ratio": ort_s / pt_s}
        results["ours_onnxruntime_vs_pytorch"] = table
    print_table(f"Our exported networks: onnxruntime vs PyTorch eager fp32, batch {batch}, {args.threads} threads",
                ["network", "onnxruntime img/s", "PyTorch img/s", "ratio"], rows)
    write_results("onnx_speed", results, args.out)


if __name__ == "__main__":
    main()
