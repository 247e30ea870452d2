"""Backbone speed against the reference implementations, and the CPU fast path.

1. Inference and one training step (forward, cross-entropy, backward, SGD step) of 1000-class
   classifiers at 224x224: our MobileNet V1 1.0 vs timm ``mobilenetv1_100``, our V2 1.0 vs
   torchvision ``mobilenet_v2`` (target: ratio ours / reference >= 1.0).
2. The fast path for V1 1.0-224: eager float32, ``channels_last``, ``channels_last`` + bf16
   autocast (what ``callbacks.channels_last.enabled=true trainer.precision=bf16-mixed`` and
   ``predict.channels_last=true predict.precision=bf16`` run), the same with BatchNorm folded
   (``predict.fold_bn``, predict's default), optionally ``torch.compile`` (target: >= 2.5x eager
   float32 inference). Training steps: eager float32, ``channels_last`` float32 and
   ``channels_last`` + bf16.

    python benchmarks/backbone_speed.py [--quick] [--compile] [--threads 2]

Prints tables and writes benchmarks/results/backbone_speed.json.
"""

from __future__ import annotations

import contextlib

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import timm
import torch
import torchvision
from common import parser, print_table, setup, time_rounds, write_results
from torch import nn

from mbtasks.backbones.mobilenet_v1 import MobileNetV1
from mbtasks.backbones.mobilenet_v2 import MobileNetV2
from mbtasks.bn_folding import fold_batchnorm
from mbtasks.models.classifier import Classifier, ClassifierHead

SIZE = 224


def models() -> dict[str, nn.Module]:
    return {
        # ReLU6 as timm's V1 (the paper's ReLU costs the same)
        "ours V1 1.0": Classifier(MobileNetV1(1.0, act="relu6"), ClassifierHead(1024, 1000)),
        "timm mobilenetv1_100": timm.create_model("mobilenetv1_100", pretrained=False),
        "ours V2 1.0": Classifier(MobileNetV2(1.0), ClassifierHead(1280, 1000, dropout=0.2)),
        "torchvision mobilenet_v2": torchvision.models.mobilenet_v2(weights=None),
    }


PAIRS = [("ours V1 1.0", "timm mobilenetv1_100"), ("ours V2 1.0", "torchvision mobilenet_v2")]


def infer_fn(model: nn.Module, x: torch.Tensor, bf16: bool = False):
    def run():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            model(x)

    return run


def train_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool = False):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def run():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def compare_references(batch: int, train_batch: int, warmup: int, repeats: int) -> tuple[list, dict]:
    nets = models()
    x = torch.randn(batch, 3, SIZE, SIZE)
    infer = time_rounds({k: infer_fn(m.eval(), x) for k, m in nets.items()}, warmup, repeats)
    xt, yt = torch.randn(train_batch, 3, SIZE, SIZE), torch.randint(0, 1000, (train_batch,))
    nets = models()  # fresh weights: the inference copies are untouched by optimizer state
    train = time_rounds({k: train_fn(m.train(), xt, yt) for k, m in nets.items()}, warmup, repeats)
    rows, out = [], {}
    for ours, ref in PAIRS:
        for stage, times, b in (("inference", infer, batch), ("train step", train, train_batch)):
            o, r = b / times[ours], b / times[ref]
            rows.append([f"{stage}: {ours} vs {ref}", o, r, o / r])
            out[f"{stage} {ours} vs {ref}"] = {
                "ours_img_s": o,
                "reference_img_s": r,
                "ratio": o / r,
                "batch": b,
                "target_ratio": 1.0,
            }
    return rows, out


def fast_path(batch: int, train_batch: int, warmup: int, repeats: int, compile_: bool) -> tuple[list, dict]:
    def v1() -> nn.Module:
        torch.manual_seed(0)
        return Classifier(MobileNetV1(1.0, act="relu6"), ClassifierHead(1024, 1000))

    x = torch.randn(batch, 3, SIZE, SIZE)
    eager = v1().eval()
    nhwc = v1().eval().to(memory_format=torch.channels_last)
    folded = v1().eval()
    fold_batchnorm(folded)
    folded = folded.to(memory_format=torch.channels_last)
    fns = {
        "eager fp32": infer_fn(eager, x),
        "channels_last fp32": infer_fn(nhwc, x),
        "channels_last + bf16": infer_fn(nhwc, x, bf16=True),
        "channels_last + bf16 + BN folded": infer_fn(folded, x, bf16=True),
    }
    if compile_:
        compiled = torch.compile(v1().eval().to(memory_format=torch.channels_last))
        fns["channels_last + bf16 + compile"] = infer_fn(compiled, x, bf16=True)
    infer = time_rounds(fns, warmup, repeats)
    xt, yt = torch.randn(train_batch, 3, SIZE, SIZE), torch.randint(0, 1000, (train_batch,))
    train = time_rounds(
        {
            "eager fp32": train_fn(v1().train(), xt, yt),
            "channels_last fp32": train_fn(v1().train().to(memory_format=torch.channels_last), xt, yt),
            "channels_last + bf16": train_fn(v1().train().to(memory_format=torch.channels_last), xt, yt, bf16=True),
        },
        warmup,
        repeats,
    )
    rows, out = [], {}
    base_i, base_t = infer["eager fp32"], train["eager fp32"]
    for k, t in infer.items():
        rows.append([f"inference: {k}", batch / t, base_i / t])
        out[f"inference {k}"] = {"img_s": batch / t, "speedup_vs_eager_fp32": base_i / t, "batch": batch}
    for k, t in train.items():
        rows.append([f"train step: {k}", train_batch / t, base_t / t])
        out[f"train step {k}"] = {"img_s": train_batch / t, "speedup_vs_eager_fp32": base_t / t, "batch": train_batch}
    out["target_inference_speedup"] = 2.5
    return rows, out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on 2 cores)")
    p.add_argument("--batch", type=int, default=None, help="inference batch (default 32, --quick 8)")
    p.add_argument("--only", choices=["references", "fast-path"], default=None, help="run one of the two parts")
    args = p.parse_args()
    setup(args.threads)
    batch = args.batch or (8 if args.quick else 32)
    train_batch = 8 if args.quick else 16
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = 1 if args.quick else 2
    refs, fast = None, None
    if args.only != "fast-path":
        rows, refs = compare_references(batch, train_batch, warmup, repeats)
        print_table(
            f"MobileNets at {SIZE}x{SIZE}, {args.threads} threads (img/s, median of {repeats})",
            ["comparison", "ours img/s", "reference img/s", "ratio"],
            rows,
        )
    if args.only != "references":
        rows, fast = fast_path(batch, train_batch, warmup, repeats, args.compile)
        print_table(
            f"Fast path, our V1 1.0-{SIZE} (img/s, median of {repeats})", ["variant", "img/s", "x eager fp32"], rows
        )
    write_results(
        "backbone_speed",
        {"quick": args.quick, "image_size": SIZE, "repeats": repeats, "references": refs, "fast_path": fast},
        args.out,
    )


if __name__ == "__main__":
    main()
