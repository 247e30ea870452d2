"""Detection end to end at 320x320: our SSDLite on MobileNet V2 1.0 vs torchvision's
``ssdlite320_mobilenet_v3_large``, same batch, same post-processing thresholds.

End to end = normalisation + network + decoding + per-class NMS, from float images in [0, 1]
at 320x320 (torchvision's model does its own normalise/resize transform and post-processing).
Ours runs as ``mode=predict`` does: eager float32 with BatchNorm folded into the convs
(``predict.fold_bn=true``, the default; also shown unfolded), and with the fast path
(``predict.channels_last=true predict.precision=bf16``: NHWC + bf16 autocast, post-processing
in float32).
Targets: ours eager >= 0.8x torchvision eager (their V3 backbone has fewer mult-adds), ours fast
path >= 1.2x. Both nets have random weights; thresholds are set alike (score 0.05, NMS IoU 0.6,
100 detections) so NMS does comparable (light) work.

    python benchmarks/detection_e2e.py [--quick] [--batch 8] [--threads 2]

Prints a table and writes benchmarks/results/detection_e2e.json.
"""

from __future__ import annotations

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import torch
import torchvision
from common import build_task, parser, print_table, setup, time_rounds, write_results
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from mbtasks.inference import Predictor

SIZE = 320
SCORE, NMS_IOU, MAX_DET = 0.05, 0.6, 100


def ours():
    task = build_task(
        [
            "task=detection",
            "backbone=mobilenet_v2",
            "head=ssdlite",
            f"data.image_size={SIZE}",
            "profile.num_classes=90",
            f"task.score_threshold={SCORE}",
            f"task.nms_iou={NMS_IOU}",
            f"task.max_detections={MAX_DET}",
        ]
    )
    mean = torch.tensor(task.info["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(task.info["std"]).view(1, 3, 1, 1)
    return task, mean, std


def mult_adds(fn, x) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn(x)
    return int(counter.get_total_flops() // 2 // x.shape[0])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="images per call (default 8, --quick 2)")
    args = p.parse_args()
    setup(args.threads)
    batch = args.batch or (2 if args.quick else 8)
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = 1 if args.quick else 2
    images = torch.rand(batch, 3, SIZE, SIZE)
    task, mean, std = ours()
    plain_task, fast_task = ours()[0], ours()[0]
    plain_task.load_state_dict(task.state_dict())
    fast_task.load_state_dict(task.state_dict())
    # what mbtasks.load / mode=predict run: BN folded (the default), and the fast path on top
    cfg = OmegaConf.create({"data": {"eval_transforms": None}})  # tensors in: no eval transforms to run
    predictor = Predictor(task, cfg, device="cpu", fold_bn=True)
    fast = Predictor(fast_task, cfg, device="cpu", fold_bn=True, channels_last=True, precision="bf16")
    theirs = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None,
        weights_backbone=None,
        num_classes=91,
        score_thresh=SCORE,
        nms_thresh=NMS_IOU,
        detections_per_img=MAX_DET,
    ).eval()

    def run_ours(x=images):
        return predictor.forward((x - mean) / std)

    def run_plain(x=images):
        with torch.inference_mode():
            return plain_task.model.detect((x - mean) / std)

    def run_fast(x=images):
        return fast.forward((x - mean) / std)

    def run_theirs(x=images):
        with torch.inference_mode():
            return theirs(list(x))

    t = time_rounds(
        {
            "ours eager fp32": run_ours,
            "ours eager fp32, BN not folded": run_plain,
            "ours fast path": run_fast,
            "torchvision eager fp32": run_theirs,
        },
        warmup,
        repeats,
    )
    ref = batch / t["torchvision eager fp32"]
    macs_ours = mult_adds(lambda x: plain_task.model(x), images[:1])
    macs_theirs = mult_adds(lambda x: theirs.head(list(theirs.backbone(x).values())), images[:1])
    rows, out = [], {}
    for name, seconds in t.items():
        ips = batch / seconds
        target = {"ours eager fp32": 0.8, "ours fast path": 1.2}.get(name)
        rows.append([name, ips, ips / ref, target if target else "-"])
        out[name] = {"img_s": ips, "ratio_vs_torchvision_eager": ips / ref, "target_ratio": target}
    print_table(
        f"Detection end to end at {SIZE}x{SIZE}, batch {batch}, {args.threads} threads (median of {repeats}); "
        f"network mult-adds: ours {macs_ours / 1e6:.0f}M, torchvision {macs_theirs / 1e6:.0f}M",
        ["pipeline", "img/s", "x torchvision", "target"],
        rows,
    )
    write_results(
        "detection_e2e",
        {
            "quick": args.quick,
            "batch": batch,
            "repeats": repeats,
            "image_size": SIZE,
            "thresholds": {"score": SCORE, "nms_iou": NMS_IOU, "max_detections": MAX_DET},
            "mult_adds": {"ours": macs_ours, "torchvision": macs_theirs},
            "pipelines": out,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
