"""Detection inference speed: our SSD / SSDLite detectors vs torchvision's
``ssdlite320_mobilenet_v3_large``, same input size, batch and threads, in one run.

Our detectors are built from the real config tree (as ``mode=profile`` builds them, with
``--classes`` classes); torchvision's is built untrained (``weights=None,
weights_backbone=None``: nothing is downloaded). Two timings per model, median over
``--repeats`` batches after ``--warmup``:

- ``network``: backbone + head on a ready ``(N, 3, S, S)`` tensor (what the mult-adds count);
- ``end_to_end``: the model's own inference path (torchvision: resize/normalise + network +
  post-processing; ours: network + post-processing). With untrained weights nearly every
  box passes the score thresholds, so this stresses NMS more than a trained model would.

    python benchmarks/detection_speed.py                    # 320 px, batch 8, 2 threads
    python benchmarks/detection_speed.py --size 300 --batch 1 --threads 4

Prints a table and writes ``benchmarks/results/detection_speed.json``; its ``ratio`` is our
SSDLite (MobileNet V2 1.0) network images/s over torchvision's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# OpenMP waiters must sleep on shared cores, set before torch loads (see mbtasks/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mbtasks.config import CONFIG_DIR  # noqa: E402
from mbtasks.modes.profile import count_mult_adds, count_params, profile_network  # noqa: E402

OURS = {
    # name: config overrides (task=detection is added)
    "ours ssdlite mobilenet_v2 1.0": ["backbone=mobilenet_v2", "head=ssdlite"],
    "ours ssd mobilenet_v1 1.0": [],
    "ours ssd mobilenet_v1 0.5": ["backbone.width=0.5"],
}
REFERENCE = "torchvision ssdlite320_mobilenet_v3_large"


def our_model(overrides: list[str], size: int, classes: int) -> torch.nn.Module:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "task=detection",
                "mode=profile",
                f"data.image_size={size}",
                f"profile.num_classes={classes}",
                *overrides,
            ],
        )
    return profile_network(cfg).eval()


class TorchvisionNetwork(torch.nn.Module):
    """torchvision SSD's backbone + head on a ready tensor (its ``forward`` minus pre/post-processing)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(list(self.backbone(x).values()))


def torchvision_model(classes: int) -> torch.nn.Module:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=classes + 1).eval()


@torch.no_grad()
def median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=320, help="input side (both models)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--classes", type=int, default=90, help="object classes (COCO: 90 ids, as torchvision)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights and input for every model")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "detection_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size)
    models = {name: our_model(ov, args.size, args.classes) for name, ov in OURS.items()}
    models[REFERENCE] = torchvision_model(args.classes)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        models = {name: m.to(memory_format=torch.channels_last) for name, m in models.items()}
    rows = {}
    for name, model in models.items():
        if name == REFERENCE:
            net_module = TorchvisionNetwork(model).eval()
            end_to_end = lambda m=model: m(list(x))  # noqa: E731
        else:
            net_module = model
            end_to_end = lambda m=model: m.detect(x)  # noqa: E731
        network = lambda m=net_module: m(x)  # noqa: E731
        macs = count_mult_adds(net_module, x[:1])
        t_net = median_seconds(network, args.warmup, args.repeats)
        t_e2e = median_seconds(end_to_end, args.warmup, args.repeats)
        rows[name] = {
            "params": count_params(net_module),
            "mult_adds": macs,
            "network_images_per_s": args.batch / t_net,
            "end_to_end_images_per_s": args.batch / t_e2e,
        }
    ref = rows[REFERENCE]
    for row in rows.values():
        row["network_ratio_vs_torchvision"] = row["network_images_per_s"] / ref["network_images_per_s"]
        row["end_to_end_ratio_vs_torchvision"] = row["end_to_end_images_per_s"] / ref["end_to_end_images_per_s"]
    table = Table(
        title=f"detection inference, {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, "
        f"{args.classes} classes{', channels_last' if args.channels_last else ''}"
    )
    for col in ("model", "params", "mult-adds", "network img/s", "ratio", "end-to-end img/s", "ratio"):
        table.add_column(col)
    for name, r in rows.items():
        table.add_row(
            name,
            f"{r['params'] / 1e6:.2f}M",
            f"{r['mult_adds'] / 1e9:.2f}B",
            f"{r['network_images_per_s']:.1f}",
            f"{r['network_ratio_vs_torchvision']:.2f}",
            f"{r['end_to_end_images_per_s']:.1f}",
            f"{r['end_to_end_ratio_vs_torchvision']:.2f}",
        )
    Console().print(table)
    result = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "reference": REFERENCE,
        "models": rows,
        "ratio": rows["ours ssdlite mobilenet_v2 1.0"]["network_ratio_vs_torchvision"],
    }
    if args.channels_last and args.out.name == "detection_speed.json":
        args.out = args.out.with_name("detection_speed_channels_last.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
