"""mode=predict vs the end-to-end exports on real photos of many sizes, and what decoding at reduced size did.

Three measurements, on the shared photos (``../shared/datasets``: imagenet_sample, hymenoptera val,
raccoon_voc test, fruits_voc test; every photo at its own size, 100-4605 px):

1. **preprocessing**, in uint8 levels of the resized image (before normalisation), max and mean over
   photos: predict's resize (:func:`mbtasks.export.torch_pipeline.resize_pixels`) against the ONNX
   graph's ``Resize``, and against the cv2 pipeline that validation runs (and predict ran before);
2. **end to end**, :func:`mbtasks.modes.export.export_task` (ONNX and TorchScript) verified against
   ``mode=predict`` on the photos: max probability / score / box (network-input pixels) difference.
   Classification: the ImageNet V1 0.5 @160 checkpoint (``mobilenet_v1_0.5:imagenet`` from the
   weight cache, a trained, input-sensitive network) when converted weights are there, else a random
   init; detection: SSDLite V2 @320 with ImageNet backbone weights when cached, random head. Beside
   them, what real preprocessing bugs do to the same classifier's probabilities (the old cv2 resize,
   ``align_corners=True``, BGR order, no normalisation): the tolerance ``export.e2e_atol`` 5e-3 sits
   between the measured noise and those;
3. **decoding**: JPEGs decoded at reduced size (PIL ``draft``, what the data modules did) vs full
   size (what predict and export do): mean abs normalised input difference, and top-1 answers
   changed, over the photos the reduction touches.

    python benchmarks/export_parity.py            # ~5-10 minutes on 2 loaded cores
    python benchmarks/export_parity.py --quick    # 6 photos a set

Writes benchmarks/results/export_parity.json.
"""

from __future__ import annotations

import glob
import tempfile
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import numpy as np
import torch
from common import REPO, build_task, parser, print_table, setup, write_results

DATASETS = REPO.parent / "shared" / "datasets"
SETS = {
    "imagenet_sample": "*.JPEG",
    "hymenoptera": "val/*/*.jpg",
    "raccoon_voc": "test/*.jpg",
    "fruits_voc": "test/*.jpg",
}


def photos(root: Path, per_set: int) -> dict[str, list[Path]]:
    out = {}
    for name, pattern in SETS.items():
        files = sorted(Path(p) for p in glob.glob(str(root / name / pattern)))
        if files:
            out[name] = [files[i] for i in np.linspace(0, len(files) - 1, min(per_set, len(files))).astype(int)]
    return out


def onnx_preprocess(pre):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from mbtasks.export.onnx_pipeline import _Graph, preprocess_nodes

    g = _Graph("pre/")
    preprocess_nodes(g, pre)
    graph = helper.make_graph(
        g.nodes,
        "pre",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, None)],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, None)],
        initializer=g.inits,
    )
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    return lambda image: session.run(None, {"pixels": image[None]})[0][0]


def preprocessing_rows(sets: dict[str, list[Path]]) -> list[dict]:
    """Resize differences in uint8 levels: ours vs ONNX, ours vs cv2 (albumentations)."""
    import albumentations as A

    from mbtasks.data.image_files import read_rgb
    from mbtasks.export.preprocessing import Preprocessing
    from mbtasks.export.torch_pipeline import Preprocess

    rows = []
    for label, (pre, cv2) in {
        "resize 320 (detection)": (Preprocessing(320, None, (0.0,) * 3, (1 / 255,) * 3), A.Resize(320, 320)),
        "shorter 256 + crop 224 (classification)": (
            Preprocessing(224, 256, (0.0,) * 3, (1 / 255,) * 3),
            A.Compose([A.SmallestMaxSize(256), A.CenterCrop(224, 224)]),
        ),
    }.items():
        ours, graph = Preprocess(pre), onnx_preprocess(pre)
        onnx_d, cv2_d, cv2_mean = [], [], []
        for files in sets.values():
            for path in files:
                image = read_rgb(path)
                with torch.no_grad():
                    x = ours(torch.from_numpy(image.copy())[None])[0].numpy()
                onnx_d.append(float(np.abs(graph(image) - x).max()))
                ref = cv2(image=image)["image"].astype(np.float32).transpose(2, 0, 1)
                cv2_d.append(float(np.abs(ref - x).max()))
                cv2_mean.append(float(np.abs(ref - x).mean()))
        rows.append(
            {
                "pipeline": label,
                "photos": len(onnx_d),
                "onnx_max_levels": max(onnx_d),
                "cv2_max_levels": max(cv2_d),
                "cv2_mean_levels": float(np.mean(cv2_mean)),
            }
        )
    return rows


def imagenet_classifier():
    """``(task, train_cfg, name)``: the ImageNet V1 0.5 checkpoint when its converted weights are cached."""
    import mbtasks

    try:
        model = mbtasks.load("mobilenet_v1_0.5:imagenet", device="cpu", fold_bn=False)
        return model.task, model.train_cfg, "mobilenet_v1_0.5:imagenet @160"
    except Exception as err:  # noqa: BLE001 - no cached weights: a random init says less, but runs
        print(f"(no ImageNet V1 0.5 weights: {err}; random init instead)")
    cfg_task = build_task(
        ["task=classification", "backbone.width=0.5", "data.image_size=160", "profile.num_classes=10"]
    )
    return cfg_task, None, "random-init V1 0.5 @160"


def detector(root: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mbtasks.config import CONFIG_DIR

    overrides = ["task=detection", "data=voc", f"data.root={root / 'raccoon_voc'}", "profile.num_classes=1"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    task = build_task(overrides)
    task.model.score_threshold = 0.05
    return task, cfg


def end_to_end_rows(sets: dict[str, list[Path]], root: Path, quick: bool) -> list[dict]:
    from mbtasks.modes.export import export_settings, export_task

    rows = []
    task, train_cfg, name = imagenet_classifier()
    jobs = [("classification", name, task, train_cfg, ["imagenet_sample", "hymenoptera"])]
    if train_cfg is not None:
        det, det_cfg = detector(root)
        jobs.append(("detection", "SSDLite V2 @320, random head", det, det_cfg, ["raccoon_voc", "fruits_voc"]))
    for kind, label, t, cfg, names in jobs:
        if cfg is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "photos"
            folder.mkdir()
            files = [p for n in names for p in sets.get(n, [])][: 4 if quick else 12]
            for p in files:
                (folder / p.name).symlink_to(p)
            for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
                # the default tolerances: export.e2e_atol 5e-3, detection's export.box_atol 1.0
                settings = export_settings(kind, format=fmt, inputs=str(folder), num_inputs=len(files))
                record = export_task(t, cfg, settings, Path(tmp) / f"out{suffix}")
                e2e = record["end_to_end"]
                rows.append(
                    {
                        "task": kind,
                        "model": label,
                        "format": fmt,
                        "images": e2e["images"],
                        "sizes": len(e2e["sizes"]),
                        **{f"max_{k}": v for k, v in e2e["max_abs_diff"].items()},
                        "detections": e2e.get("detections"),
                    }
                )
    return rows


def bug_rows(sets: dict[str, list[Path]]) -> list[dict]:
    """What preprocessing bugs (and the old cv2 resize) do to a trained classifier's probabilities."""
    import torch.nn.functional as F

    from mbtasks.data.image_files import read_rgb
    from mbtasks.data.transforms import apply, to_tensor
    from mbtasks.inference.inputs import Preprocess, eval_pipeline

    task, train_cfg, name = imagenet_classifier()
    if train_cfg is None:
        return []
    ours = Preprocess(train_cfg, task.info)
    mean, std = tuple(task.info["mean"]), tuple(task.info["std"])
    cv2 = eval_pipeline(train_cfg)
    size = int(task.info["image_size"])
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def corners(image):  # align_corners=True on the cv2 geometry (shorter side, centre crop)
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()
        h, w = image.shape[:2]
        k = (size / 0.875) / min(h, w)
        x = F.interpolate(x, size=[round(h * k), round(w * k)], mode="bilinear", align_corners=True)[0]
        top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
        return (x[:, top : top + size, left : left + size] / 255 - m) / s

    variants = {
        "cv2 resize (predict before this fix)": lambda im: to_tensor(apply(cv2, im)["image"], mean, std),
        "align_corners=True": corners,
        "BGR instead of RGB": lambda im: ours(np.ascontiguousarray(im[..., ::-1])),
        "no mean / std": lambda im: ours(im) * s + m,
    }
    files = [p for n in ("imagenet_sample", "hymenoptera") for p in sets.get(n, [])]
    rows = []
    with torch.no_grad():
        base = {p: task.predict_step(ours(read_rgb(p))[None])[0] for p in files}
        for label, fn in variants.items():
            diffs, flips = [], 0
            for p in files:
                probs = task.predict_step(fn(read_rgb(p))[None].float())[0]
                diffs.append(float((probs - base[p]).abs().max()))
                flips += int(probs.argmax() != base[p].argmax())
            rows.append(
                {
                    "variant": label,
                    "model": name,
                    "photos": len(files),
                    "max_prob_diff": max(diffs),
                    "median_max_prob_diff": float(np.median(diffs)),
                    "top1_changed": flips,
                }
            )
    return rows


def decode_rows(sets: dict[str, list[Path]]) -> list[dict]:
    """Reduced (PIL draft, as the data modules did) vs full-size decoding, through predict's preprocessing."""
    from mbtasks.data.image_files import read_rgb, read_rgb_sized
    from mbtasks.data.transforms import decode_side
    from mbtasks.inference.inputs import Preprocess, eval_pipeline

    task, train_cfg, name = imagenet_classifier()
    if train_cfg is None:
        return []
    pre = Preprocess(train_cfg, task.info)
    side = decode_side(eval_pipeline(train_cfg))
    rows = []
    with torch.no_grad():
        for set_name, files in sets.items():
            diffs, prob, flips, touched = [], [], 0, 0
            for p in files:
                full, (reduced, _) = read_rgb(p), read_rgb_sized(p, side)
                if reduced.shape == full.shape:
                    continue
                touched += 1
                a, b = pre(full), pre(reduced)
                diffs.append(float((a - b).abs().mean()))
                pa, pb = task.predict_step(a[None])[0], task.predict_step(b[None])[0]
                prob.append(float((pa - pb).abs().max()))
                flips += int(pa.argmax() != pb.argmax())
            rows.append(
                {
                    "data": set_name,
                    "model": name,
                    "decode_side": side,
                    "photos": len(files),
                    "reduced": touched,
                    "mean_abs_input_diff": float(np.mean(diffs)) if diffs else 0.0,
                    "max_prob_diff": max(prob, default=0.0),
                    "top1_changed": flips,
                }
            )
    return rows


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=None, help="photos per data set (default 40, --quick 6)")
    p.add_argument("--data", type=Path, default=DATASETS, help=f"the shared data sets (default {DATASETS})")
    args = p.parse_args()
    setup(args.threads)
    sets = photos(args.data, args.photos or (6 if args.quick else 40))
    if not sets:
        raise SystemExit(f"no photos under {args.data} (give --data)")
    pre = preprocessing_rows(sets)
    print_table("resize: predict vs ONNX graph vs cv2 (uint8 levels)", list(pre[0]), [list(r.values()) for r in pre])
    e2e = end_to_end_rows(sets, args.data, args.quick)
    cols = sorted({k for r in e2e for k in r}, key=lambda k: list(e2e[0]).index(k) if k in e2e[0] else 99)
    print_table(
        "end to end vs mode=predict (boxes in network-input pixels)", cols, [[r.get(c, "") for c in cols] for r in e2e]
    )
    bugs = bug_rows(sets)
    if bugs:
        print_table("what preprocessing bugs do (vs predict)", list(bugs[0]), [list(r.values()) for r in bugs])
    dec = decode_rows(sets)
    if dec:
        print_table("reduced vs full-size decoding", list(dec[0]), [list(r.values()) for r in dec])
    write_results(
        "export_parity",
        {
            "photos_per_set": {k: len(v) for k, v in sets.items()},
            "preprocessing": pre,
            "end_to_end": e2e,
            "bugs": bugs,
            "decoding": dec,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
