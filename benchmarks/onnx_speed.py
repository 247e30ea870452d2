"""Exported models in onnxruntime: ours vs timm exported the same way, and ours vs PyTorch eager.

1. Our V1 1.0-224 classifier (the graph ``mode=export`` writes) vs timm ``mobilenetv1_100``, both
   through :func:`mbtasks.export.formats.write_onnx`, in onnxruntime at batch 32 with 2 threads
   (target: ratio ours / timm >= 1.0).
2. Every exported network of ours (classification V1 / V2 at 224, SSDLite V2 detection at 320
   with decoding, embedding V1 at 160) in onnxruntime vs the same network in PyTorch eager fp32.
3. End to end (``mode=export``'s default): uint8 camera frames (640x480, real photos when
   /work/shared/datasets or ``--images`` has them) to final answers in one onnxruntime call, vs
   the network-only graph with ``mode=predict``'s own preprocessing (albumentations / cv2, numpy
   normalisation) before it and numpy post-processing after it (top-k; NMS with
   :func:`mbtasks.export.postprocess.detections_from_outputs` and box scaling).

4. INT8 (``--int8 CKPT ...``, only this section): each checkpoint exported with
   ``export.quantize=int8`` (network graph, calibrated on its own data) and with the op types of
   ``--int8-exclude`` kept float: int8 vs fp32 onnxruntime throughput and the validation metric
   of both (targets: >= 2x, <= 1 point top-1 / 0.01 mAP@0.5 / 0.01 verification accuracy lost).
   Where the int8 time goes, per op type, and quantization variants: ``benchmarks/int8_profile.py``.

    python benchmarks/onnx_speed.py [--quick] [--threads 2] [--batch 32] [--e2e-only]
    python benchmarks/onnx_speed.py --int8 hym.ckpt raccoon.ckpt orl.ckpt [--int8-exclude depthwise --int8-exclude Gemm]

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

from mbtasks.export.formats import load_e2e_runner, load_runner, save_onnx, write_onnx

# name -> (config overrides, input size)
NETWORKS = {
    "classification V1 1.0": (["backbone.act=relu6", "data.image_size=224"], 224),
    "classification V2 1.0": (["backbone=mobilenet_v2", "data.image_size=224"], 224),
    "detection SSDLite V2 1.0": (
        ["task=detection", "backbone=mobilenet_v2", "head=ssdlite", "data.image_size=320", "profile.num_classes=80"],
        320,
    ),
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


# name -> (config overrides, deployment input: the checkpoint's eval pipeline decides the preprocessing)
END_TO_END = {
    "classification V1 1.0 (shorter side 256, crop 224)": [
        "data=imagefolder",
        "data.root=unused",
        "data.image_size=224",
    ],
    "detection SSDLite V2 1.0 @320": NETWORKS["detection SSDLite V2 1.0"][0],
    "embedding V1 1.0 @160": NETWORKS["embedding V1 1.0"][0],
}
FRAME = (480, 640)  # (H, W) of the deployed camera frames


def graph_of(task):
    """The network ``mode=export`` writes for ``task`` (its spec's export graph)."""
    return task.spec.export.graph(task)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mbtasks.config import CONFIG_DIR
    from mbtasks.tasks import build_task as build
    from mbtasks.tasks import spec_for_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return build(cfg, spec_for_config(cfg).profile_info(cfg, cfg.profile.num_classes), training=False).eval(), cfg


def frames(batch: int, folder: Path | None) -> np.ndarray:
    """``(batch, 480, 640, 3)`` uint8: real photos resized with PIL, else random pixels."""
    from PIL import Image

    roots = (
        [folder]
        if folder
        else [Path("/work/shared/datasets/fruits_voc/test"), Path("/work/shared/datasets/hymenoptera/val")]
    )
    files = [f for r in roots if r.is_dir() for f in sorted(r.rglob("*.jpg"))][:batch]
    if not files:
        return np.random.default_rng(0).integers(0, 256, (batch, *FRAME, 3), dtype=np.uint8)
    imgs = [np.asarray(Image.open(f).convert("RGB").resize(FRAME[::-1])) for f in files]
    return np.stack([imgs[i % len(imgs)] for i in range(batch)])


def end_to_end_speed(folder: Path, images: np.ndarray, threads: int, warmup: int, repeats: int) -> tuple[list, dict]:
    """Section 3: one end-to-end session vs predict's preprocessing + network session + numpy post."""
    rows, table = [], {}
    for name, overrides in END_TO_END.items():
        row, table[name] = end_to_end_row(name, overrides, folder, images, threads, warmup, repeats)
        rows.append(row)
    return rows, table


def end_to_end_row(
    name: str, overrides: list[str], folder: Path, images: np.ndarray, threads: int, warmup: int, repeats: int
) -> tuple[list, dict]:
    import onnx

    from mbtasks.data.transforms import apply, to_tensor
    from mbtasks.export.onnx_pipeline import wrap_network
    from mbtasks.export.postprocess import detections_from_outputs
    from mbtasks.export.preprocessing import preprocessing_of
    from mbtasks.inference.inputs import eval_pipeline
    from mbtasks.modes.export import export_settings

    task, cfg = compose(overrides)
    spec = task.spec.export
    graph = spec.graph(task)
    size, batch = int(cfg.data.image_size), len(images)
    net_path, e2e_path = folder / "network.onnx", folder / "end_to_end.onnx"
    write_onnx(graph.module, torch.randn(2, 3, size, size), net_path, graph.output_names, {"task": name})
    pre = preprocessing_of(cfg, size, cfg.data.mean, cfg.data.std)
    post = spec.post_settings(task, graph, export_settings(task.name).options)  # the defaults (top-5...)
    e2e_model = wrap_network(onnx.load(str(net_path)), pre, lambda g: spec.onnx_tail(g, post))
    save_onnx(e2e_model, e2e_path, {"task": name})
    network, e2e = load_runner("onnx", net_path, threads), load_e2e_runner("onnx", e2e_path, threads)
    pipeline, mean, std = eval_pipeline(cfg), tuple(cfg.data.mean), tuple(cfg.data.std)

    def preprocess():
        return np.stack([to_tensor(apply(pipeline, im)["image"], mean, std).numpy() for im in images])

    def postprocess(outs):
        if task.name == "classification":
            return np.argsort(-outs[1], axis=1)[:, :5]
        if task.name == "detection":
            dets = detections_from_outputs(
                *outs, **{k: post[k] for k in ("score_threshold", "nms_iou", "max_detections", "topk_candidates")}
            )
            scale = np.array([FRAME[1] / size, FRAME[0] / size] * 2, np.float32)
            return [d["boxes"] * scale for d in dets]
        return outs[0]

    x = preprocess()
    outs = network(x)
    t = time_rounds(
        {
            "end_to_end": lambda: e2e(images),
            "two_step": lambda: postprocess(network(preprocess())),
            "network": lambda: network(x),
            "preprocess": preprocess,
            "postprocess": lambda: postprocess(outs),
        },
        warmup,
        repeats,
    )
    e2e_s, two_s = batch / t["end_to_end"], batch / t["two_step"]
    pre_ms, post_ms = 1000 * t["preprocess"] / batch, 1000 * t["postprocess"] / batch
    row = [name, e2e_s, two_s, e2e_s / two_s, batch / t["network"], pre_ms, post_ms]
    return row, {
        "end_to_end_img_s": e2e_s,
        "network_plus_numpy_img_s": two_s,
        "ratio": e2e_s / two_s,
        "network_only_img_s": batch / t["network"],
        "numpy_preprocess_ms_per_img": pre_ms,
        "numpy_postprocess_ms_per_img": post_ms,
    }


def int8_speed(
    checkpoints: list[Path], variants: list[list[str]], batch: int, threads: int, calibration_images: int
) -> tuple[list, dict]:
    """Section 4: ``export.quantize=int8`` of each checkpoint, per set of op types kept float."""
    from mbtasks.errors import ConfigError
    from mbtasks.export.settings import int8_max_drop
    from mbtasks.modes.export import export_settings, export_task
    from mbtasks.tasks import load_task

    rows, table = [], {}
    for ckpt in checkpoints:
        task, train_cfg = load_task(ckpt)
        data = Path(str(train_cfg.data.get("root") or "?")).name
        # the task's tolerated drop (its export.int8_max_drop_* default): the target; the export itself
        # accepts any drop (1: the whole metric) so that every variant is measured
        key, target = int8_max_drop(export_settings(task.name).options, task.name)
        for exclude in variants:
            try:
                settings = export_settings(
                    task.name,
                    end_to_end=False,
                    quantize="int8",
                    calibration_images=calibration_images,
                    int8_exclude=exclude,
                    speed_batch=batch,
                    speed_threads=threads,
                    **{key: 1.0},
                )
                with tempfile.TemporaryDirectory() as tmp:
                    r = export_task(task, train_cfg, settings, Path(tmp) / "net.onnx")
            except ConfigError as err:  # e.g. --int8-exclude Gemm on a network without Gemm: skip that variant
                print(f"{data} {task.name}, float {exclude}: skipped ({err})")
                continue
            q, s = r["int8"], r["int8"]["speed"]
            name = f"{data} {task.name}" + (
                " (default)" if exclude is None else f" (float: {', '.join(exclude) or 'none'})"
            )
            ok = q["drop"] <= target and s["int8_vs_fp32"] >= 2.0
            rows.append(
                [
                    name,
                    q["metric"],
                    q["fp32"],
                    q["int8"],
                    q["drop"],
                    s["fp32"],
                    s["int8"],
                    s["int8_vs_fp32"],
                    "yes" if ok else "no",
                ]
            )
            table[name] = {
                "checkpoint": str(ckpt),
                "kept_float": r["quantization"]["kept_float"]["op_types"],
                **q,
                "target": {"max_drop": target, "min_speedup": 2.0},
                "met": ok,
            }
    return rows, table


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="batch (default 32, --quick 8)")
    p.add_argument("--e2e-only", action="store_true", help="only section 3 (end to end vs network + numpy)")
    p.add_argument("--images", type=Path, default=None, help="folder of photos for section 3")
    p.add_argument(
        "--int8",
        type=Path,
        nargs="+",
        default=None,
        metavar="CKPT",
        help="only section 4: export.quantize=int8 of these checkpoints vs fp32",
    )
    p.add_argument(
        "--int8-exclude",
        action="append",
        default=[],
        help="comma-separated op types (or 'depthwise') to also measure kept float (repeatable; ',' = "
        "nothing float); the first row per checkpoint is the task's default",
    )
    p.add_argument("--calibration-images", type=int, default=256)
    args = p.parse_args()
    setup(args.threads)
    batch = args.batch or (8 if args.quick else 32)
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = 1 if args.quick else 2
    results: dict = {"batch": batch, "repeats": repeats, "quick": args.quick}
    if args.int8:
        variants = [None] + [[k.strip() for k in v.split(",") if k.strip()] for v in args.int8_exclude]
        rows, results["int8_vs_fp32"] = int8_speed(args.int8, variants, batch, args.threads, args.calibration_images)
        print_table(
            f"onnxruntime INT8 (QDQ) vs fp32 network graphs, batch {batch}, {args.threads} threads; metric on "
            "the checkpoint's validation split (top1 as a fraction)",
            ["checkpoint", "metric", "fp32", "int8", "drop", "fp32 img/s", "int8 img/s", "speed-up", "targets met"],
            rows,
        )
        write_results("onnx_speed_int8", results, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows, table = end_to_end_speed(Path(tmp), frames(batch, args.images), args.threads, warmup, repeats)
    results["end_to_end_vs_network_plus_numpy"] = table
    print_table(
        f"onnxruntime, {FRAME[1]}x{FRAME[0]} uint8 frames to answers, batch {batch}, {args.threads} threads: "
        "one end-to-end graph vs predict's preprocessing + network graph + numpy post-processing",
        [
            "model",
            "end to end img/s",
            "network + numpy img/s",
            "ratio",
            "network alone img/s",
            "numpy pre ms/img",
            "numpy post ms/img",
        ],
        rows,
    )
    if args.e2e_only:
        write_results("onnx_speed_e2e", results, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ours = graph_of(build_task(NETWORKS["classification V1 1.0"][0]))
        ref = Plain(timm.create_model("mobilenetv1_100", pretrained=False))
        x = torch.randn(batch, 3, 224, 224).numpy()
        run_ours = export(ours.module, ours.output_names, 224, folder, "ours_v1", args.threads)
        run_ref = export(ref, ref.output_names, 224, folder, "timm_v1", args.threads)
        t = time_rounds({"ours": lambda: run_ours(x), "timm": lambda: run_ref(x)}, warmup, repeats)
        o, r = batch / t["ours"], batch / t["timm"]
        results["ours_v1_vs_timm_onnxruntime"] = {"ours_img_s": o, "timm_img_s": r, "ratio": o / r, "target_ratio": 1.0}
        print_table(
            f"onnxruntime, V1 1.0-224 classifier, batch {batch}, {args.threads} threads",
            ["model", "img/s", "ratio"],
            [["ours", o, o / r], ["timm mobilenetv1_100", r, 1.0]],
        )
        rows, table = [], {}
        for name, (overrides, size) in NETWORKS.items():
            graph = graph_of(build_task(overrides))
            runner = export(graph.module, graph.output_names, size, folder, name, args.threads)
            images = torch.randn(batch, 3, size, size)
            arr = images.numpy()
            np.testing.assert_allclose(runner(arr[:2])[0], graph.module(images[:2])[0].detach().numpy(), atol=1e-3)
            t = time_rounds(
                {"onnxruntime": lambda r=runner, a=arr: r(a), "pytorch": pytorch_fn(graph.module, images)},
                warmup,
                repeats,
            )
            ort_s, pt_s = batch / t["onnxruntime"], batch / t["pytorch"]
            rows.append([f"{name} @{size}", ort_s, pt_s, ort_s / pt_s])
            table[name] = {
                "image_size": size,
                "onnxruntime_img_s": ort_s,
                "pytorch_eager_fp32_img_s": pt_s,
                "ratio": ort_s / pt_s,
            }
        results["ours_onnxruntime_vs_pytorch"] = table
    print_table(
        f"Our exported networks: onnxruntime vs PyTorch eager fp32, batch {batch}, {args.threads} threads",
        ["network", "onnxruntime img/s", "PyTorch img/s", "ratio"],
        rows,
    )
    write_results("onnx_speed", results, args.out)


if __name__ == "__main__":
    main()
