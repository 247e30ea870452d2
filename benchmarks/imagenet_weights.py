"""Published ImageNet weights through mbtasks against their original runtimes, on real ImageNet photos.

Every published weight whose original file is in ``--weights`` (default ../shared/weights) is
converted into a throwaway cache and scored on the 100 photos of ``imagenet_sample`` (one per
100 classes, every 10th class index), twice:

- **ours**: ``mbtasks.load("<name>:imagenet").predict(photos)``, at the input size the loaded
  checkpoint carries (224 for V2 1.0 and V1 1.0; 128 / 160 / 192 for the TFLite widths), with the
  checkpoint's own eval transform (shorter side to size / 0.875, centre crop);
- **the original runtime** of the same file:

  - ``mobilenet_v2-b0353104.pth``: torchvision's ``mobilenet_v2`` with that state dict and
    torchvision's own eval transform (PIL resize 256, centre crop 224, ImageNet normalisation);
  - ``mobilenet_v1_<w>_<size>_quant.tflite``: ``ai_edge_litert.interpreter.Interpreter`` on the
    same resized / cropped RGB photo as ours, as uint8 (the file's 1001 classes, 0 = background;
    uint8 softmax ties broken by the uint8 logits);
  - ``mobilenet_v1_1.0_224_imagenet_tf.pb`` (TF-slim frozen graph): TensorFlow, in a separate
    throwaway venv (``--tf-venv``, default /tmp/tfvenv; created with ``pip install tensorflow-cpu``
    unless ``--no-tf-install``, skipped if that fails or takes over 10 minutes), through a
    subprocess running a small script written to a temp file; input: the same 224 px crop as ours
    (centre 87.5 % of the shorter side), scaled ``x / 127.5 - 1``.

  The TFLite and TF runs take ours' crop on purpose: the columns then differ only by the
  conversion, not by resizing code (torchvision's row keeps its own transform, as users run it).

The caches are prepared here, never in the user's home: ``TORCH_HOME=<tmp>/torch`` (the .pth
linked into ``hub/checkpoints``), ``MBTASKS_WEIGHTS_DIR=<tmp>/weights`` (filled by
``python -m mbtasks weights convert``'s code), ``HF_HOME=<tmp>/hf`` (so a timm file in the user's
Hugging Face cache cannot stand in for the converted one).

Columns: name, input size, ours top-1 / top-5, original top-1 / top-5, |diff| of top-1 in photos,
top-1 agreement (photos of 100 with the same top-1 class), the same agreement with the original runtime
fed ours' crop (differs from the previous only for torchvision's row, which also runs its own PIL
transform: what is left is the conversion), the paper's top-1 for the width
(``Published.paper_top1``: V1 Table 6 at 224 px, V2 Table 4). 100 photos: a top-1 of 70 % has a
standard error of about 4.6 points, so compare with the paper only within ~+-5 (and the TFLite widths
run at 128-192 px, below the paper's 224). Targets: V2 1.0 and V1 1.0 within 1 photo of the original
runtime, the TFLite-derived (BatchNorm-folded, dequantised) widths within 3.

    python benchmarks/imagenet_weights.py                 # a few hundred forward passes, ~2-5 minutes
    python benchmarks/imagenet_weights.py --names mobilenet_v2_1.0 --limit 10   # a smoke run

Writes benchmarks/results/imagenet_weights.json (per-photo top-1 of both runtimes included).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import numpy as np
import torch
from common import REPO, print_table, setup, write_results

SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "weights"
SAMPLE = SHARED / "datasets" / "imagenet_sample"
TF_INSTALL_TIMEOUT_S = 600
TARGETS = {"torchvision": 1, "tensorflow": 1, "tflite": 3}  # |diff| of top-1, in photos

# The TensorFlow side, written to a temp file and run with the throwaway venv's python:
# argv: graph.pb crops.npy out.npy  (crops: (N, 224, 224, 3) RGB in 0..255) -> out: (N, 1001) logits.
TF_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    graph_path, crops_path, out_path = sys.argv[1:4]
    gd = tf.compat.v1.GraphDef()
    with open(graph_path, "rb") as f:
        gd.ParseFromString(f.read())
    names = {n.name for n in gd.node}
    inputs = [n.name for n in gd.node if n.op == "Placeholder"]
    for out in ("MobilenetV1/Predictions/Reshape_1", "MobilenetV1/Logits/SpatialSqueeze",
                "MobilenetV1/Logits/Conv2d_1c_1x1/BiasAdd"):
        if out in names:
            break
    else:
        sys.exit("no MobilenetV1 output node in the graph")
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(gd, name="")
    crops = np.load(crops_path).astype(np.float32) / 127.5 - 1.0
    with tf.compat.v1.Session(graph=graph) as sess:
        x = graph.get_tensor_by_name(inputs[0] + ":0")
        y = graph.get_tensor_by_name(out + ":0")
        outs = [np.asarray(sess.run(y, {x: crops[i:i + 1]})).reshape(1, -1) for i in range(len(crops))]
    np.save(out_path, np.concatenate(outs))
    print(f"tensorflow {tf.__version__}: input {inputs[0]}, output {out}", flush=True)
""")


# -- the photos and their truth -----------------------------------------------------------------


def sample_photos(root: Path, limit: int | None) -> tuple[list[Path], list[int], list[str]]:
    """The photos, their class indices (from the wnid in the file name) and the 1000 class names."""
    rows = [line.split("\t") for line in (root / "classes.tsv").read_text().splitlines() if line.strip()]
    index = {wnid: int(i) for i, wnid, _ in rows}
    names = [name for _, _, name in sorted(rows, key=lambda r: int(r[0]))]
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    files = files[:limit] if limit else files
    return files, [index[p.name.split("_", 1)[0]] for p in files], names


def score(top5: list[list[int]], truth: list[int]) -> tuple[float, float]:
    n = len(truth)
    top1 = sum(t[0] == y for t, y in zip(top5, truth, strict=True)) / n
    return 100 * top1, 100 * sum(y in t[:5] for t, y in zip(top5, truth, strict=True)) / n


# -- the caches -------------------------------------------------------------------------------


def sources(weights: Path) -> dict[str, tuple[Path, str]]:
    """Published name -> (original file, runtime) for the files present in ``weights``."""
    out: dict[str, tuple[Path, str]] = {}
    pth = weights / "mobilenet_v2-b0353104.pth"
    if pth.is_file():
        out["mobilenet_v2_1.0"] = (pth, "torchvision")
    for pb in sorted(weights.glob("mobilenet_v1_1.0_224*.pb")):
        out["mobilenet_v1_1.0"] = (pb, "tensorflow")
        break
    for tfl in sorted(weights.glob("mobilenet_v1_*_quant.tflite")):
        width = tfl.name.split("_")[2]
        out.setdefault(f"mobilenet_v1_{width}", (tfl, "tflite"))
    return out


def cache_env(tmp: Path) -> None:
    """TORCH_HOME / MBTASKS_WEIGHTS_DIR / HF_HOME under ``tmp`` (before huggingface_hub reads HF_HOME)."""
    os.environ["TORCH_HOME"] = str(tmp / "torch")
    os.environ["MBTASKS_WEIGHTS_DIR"] = str(tmp / "weights")
    os.environ["HF_HOME"] = str(tmp / "hf")
    os.environ["HF_HUB_OFFLINE"] = "1"


def prepare_caches(tmp: Path, files: dict[str, tuple[Path, str]]) -> None:
    """The caches of :func:`cache_env` filled as a user would: the .pth linked where torchvision keeps
    it, the .pb / .tflite files through ``python -m mbtasks weights convert``'s code."""
    from mbtasks.weights_cli import cmd_convert

    convert = []
    for path, runtime in files.values():
        if runtime == "torchvision":
            ckpt = tmp / "torch" / "hub" / "checkpoints"
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / path.name).symlink_to(path)
        else:
            convert.append(str(path))
    if convert:
        print(f"python -m mbtasks weights convert {' '.join(convert)}", flush=True)
        start = time.monotonic()
        cmd_convert(convert)
        print(f"  converted in {time.monotonic() - start:.0f} s", flush=True)


# -- ours ---------------------------------------------------------------------------------------


def run_ours(name: str, photos: list[Path], class_names: list[str]):
    """mbtasks' top-5 class indices per photo, the input size, and the loaded model."""
    import mbtasks

    model = mbtasks.load(f"{name}:imagenet", device="cpu")
    # names -> indices: 'crane' and 'maillot' name two classes each; none is a class of the sample
    # (every 10th index), so a predicted duplicate only takes the first index
    index: dict[str, int] = {}
    for i, n in enumerate(class_names):
        index.setdefault(n, i)
    results = model.predict([str(p) for p in photos])
    top5 = [[index[t.label] for t in r.top_k[:5]] for r in results]
    return top5, model.image_size, model


def crops_like_ours(model, photos: list[Path]) -> np.ndarray:
    """The photos through the loaded checkpoint's eval transform, as (N, S, S, 3) float32 RGB in
    0..255: the very pixels ``predict`` normalises (float bilinear, not rounded)."""
    from mbtasks.data.image_files import read_rgb
    from mbtasks.data.transforms import apply
    from mbtasks.export.torch_pipeline import resize_pixels

    pre = model.preprocess
    if pre.module is None:  # an albumentations pipeline (uint8 out)
        return np.stack([apply(pre.pipeline, read_rgb(p))["image"] for p in photos]).astype(np.float32)
    size, shorter = pre.module.size, pre.module.shorter_side
    crops = [resize_pixels(torch.from_numpy(read_rgb(p))[None], size, shorter)[0].permute(1, 2, 0) for p in photos]
    return torch.stack(crops).numpy()


# -- the original runtimes ------------------------------------------------------------------------


def run_torchvision(path: Path, photos: list[Path], crops: np.ndarray) -> tuple[list[list[int]], str, list[list[int]]]:
    """torchvision's model with its own eval transform; also on ours' crops (the same pixels as ours:
    separates the conversion from the resizing code)."""
    from PIL import Image
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    net = mobilenet_v2()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.eval()
    transform = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()  # resize 256, centre crop 224
    mean, std = transform.mean, transform.std
    top5, same = [], []
    with torch.no_grad():
        for p, crop in zip(photos, crops, strict=True):
            x = transform(Image.open(p).convert("RGB"))[None]
            top5.append(net(x)[0].topk(5).indices.tolist())
            y = torch.from_numpy(crop).permute(2, 0, 1).div(255)
            y = (y - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
            same.append(net(y[None])[0].topk(5).indices.tolist())
    import torchvision

    return (
        top5,
        f"torchvision {torchvision.__version__} mobilenet_v2, its own eval transform (PIL resize 256, crop 224)",
        same,
    )


def run_tflite(path: Path, crops: np.ndarray) -> tuple[list[list[int]], str]:
    """ai-edge-litert on uint8 crops; the 1001 classes' background 0 dropped (index - 1)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserve_all_tensors' "debugging only" warning
        it = Interpreter(str(path), num_threads=torch.get_num_threads(), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    # the uint8 logits feeding the softmax: tie-breaker for the uint8 probabilities (1/256 steps)
    logits = next(
        (
            d["index"]
            for d in it.get_tensor_details()
            if d["name"].startswith("MobilenetV1/Logits/SpatialSqueeze") and list(d["shape"]) == list(out["shape"])
        ),
        None,
    )
    if tuple(inp["shape"][1:3]) != crops.shape[1:3]:
        raise ValueError(f"{path.name}: input {tuple(inp['shape'])}, crops {crops.shape}")
    top5 = []
    for crop in crops:
        # the file's uint8 input: ours' float pixels rounded (at most half a level away)
        it.set_tensor(inp["index"], np.clip(np.rint(crop), 0, 255)[None].astype(inp["dtype"]))
        it.invoke()
        probs = it.get_tensor(out["index"])[0].astype(np.int64)
        key = probs * 1024
        if logits is not None:
            try:
                key = key + it.get_tensor(logits)[0].astype(np.int64)
            except ValueError:  # not kept by the delegate
                logits = None
        order = np.argsort(-key[1:], kind="stable")  # drop the background class 0
        top5.append(order[:5].tolist())
    import ai_edge_litert

    version = getattr(ai_edge_litert, "__version__", "")
    return top5, f"ai-edge-litert {version} Interpreter, uint8 input" + (
        "" if logits is not None else " (no logits tie-break)"
    )


def tf_python(venv: Path, install: bool) -> Path | None:
    """The throwaway venv's python with TensorFlow importable; created (``pip install tensorflow-cpu``,
    at most 10 minutes) when ``install``; ``None`` when there is none."""
    python = venv / "bin" / "python"

    def has_tf() -> bool:
        if not python.is_file():
            return False
        return (
            subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True, timeout=300).returncode == 0
        )

    if has_tf():
        return python
    if not install:
        print(f"TensorFlow: none in {venv} (--no-tf-install): V1 1.0's original runtime skipped", flush=True)
        return None
    print(
        f"TensorFlow: python -m venv {venv} && {venv}/bin/pip install tensorflow-cpu (at most "
        f"{TF_INSTALL_TIMEOUT_S // 60} minutes) ...",
        flush=True,
    )
    start = time.monotonic()
    try:
        if not python.is_file():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        left = TF_INSTALL_TIMEOUT_S - (time.monotonic() - start)
        proc = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "tensorflow-cpu"],
            capture_output=True,
            text=True,
            timeout=max(1, left),
        )
        if proc.returncode != 0:
            print(f"  pip failed: {proc.stderr.strip().splitlines()[-1:]}; skipped", flush=True)
            return None
    except (subprocess.SubprocessError, OSError) as err:
        print(f"  {type(err).__name__}: {err}; skipped", flush=True)
        return None
    return python if has_tf() else None


def run_tensorflow(python: Path, path: Path, crops: np.ndarray, tmp: Path) -> tuple[list[list[int]], str]:
    script, crops_file, out_file = tmp / "tf_run.py", tmp / "crops.npy", tmp / "tf_logits.npy"
    script.write_text(TF_SCRIPT)
    np.save(crops_file, crops)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [str(python), str(script), str(path), str(crops_file), str(out_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"TensorFlow run failed: {proc.stderr.strip()[-800:]}")
    logits = np.load(out_file)
    if logits.shape[1] == 1001:
        logits = logits[:, 1:]
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5].tolist()
    return top5, proc.stdout.strip().splitlines()[-1] + ", ours' 224 px crop, x / 127.5 - 1"


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS, help=f"the original files (default {WEIGHTS})")
    p.add_argument("--sample", type=Path, default=SAMPLE, help=f"photos + classes.tsv (default {SAMPLE})")
    p.add_argument("--names", default=None, help="comma-separated published names (default: every one with a file)")
    p.add_argument("--limit", type=int, default=None, help="first N photos only (a smoke run)")
    p.add_argument("--no-original", action="store_true", help="ours only (the original-runtime columns stay empty)")
    p.add_argument(
        "--tf-venv",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tfvenv",
        help="the throwaway venv with TensorFlow for the .pb's original runtime (default /tmp/tfvenv)",
    )
    p.add_argument("--no-tf-install", action="store_true", help="use --tf-venv only if TensorFlow is already there")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mbtasks_imagenet_weights_"))
    cache_env(tmp)
    try:
        run(args, p, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, p, tmp: Path) -> None:
    setup(args.threads)
    from mbtasks.backbones.weights import published

    photos, truth, class_names = sample_photos(args.sample, args.limit)
    files = sources(args.weights)
    if args.names:
        wanted = [n.strip() for n in args.names.split(",") if n.strip()]
        missing = [n for n in wanted if n not in files]
        if missing:
            p.error(f"--names: no original file in {args.weights} for {missing}; available: {list(files)}")
        files = {n: files[n] for n in wanted}
    if not files:
        p.error(f"no published weight files in {args.weights}")
    paper = {e.name: e.paper_top1 for e in published.TABLE}
    print(
        f"{len(photos)} photos of {args.sample}; weights: "
        + ", ".join(f"{n} ({f.name})" for n, (f, _) in files.items()),
        flush=True,
    )

    rows, results = [], {}
    prepare_caches(tmp, files)
    python = None
    if not args.no_original and any(rt == "tensorflow" for _, rt in files.values()):
        python = tf_python(args.tf_venv, install=not args.no_tf_install)
    for name, (path, runtime) in files.items():
        print(f"[{name}] ours ...", flush=True)
        start = time.monotonic()
        ours_top5, size, model = run_ours(name, photos, class_names)
        ours_s = time.monotonic() - start
        ours1, ours5 = score(ours_top5, truth)
        entry = {
            "file": path.name,
            "input_size": size,
            "paper_top1": paper.get(name),
            "ours": {"top1": ours1, "top5": ours5, "seconds": ours_s, "top1_pred": [t[0] for t in ours_top5]},
            "original": None,
        }
        orig_top5, note, same_crop = None, "", None
        if not args.no_original:
            print(f"[{name}] original runtime ({runtime}) ...", flush=True)
            start = time.monotonic()
            try:
                if runtime == "torchvision":
                    orig_top5, note, same_crop = run_torchvision(path, photos, crops_like_ours(model, photos))
                elif runtime == "tflite":
                    orig_top5, note = run_tflite(path, crops_like_ours(model, photos))
                    same_crop = orig_top5
                elif python is not None:
                    orig_top5, note = run_tensorflow(python, path, crops_like_ours(model, photos), tmp)
                    same_crop = orig_top5
                else:
                    note = "TensorFlow not available: skipped"
            except Exception as err:  # noqa: BLE001 - a runtime that fails leaves its columns empty
                note = f"failed: {type(err).__name__}: {err}"
            print(f"  {note}", flush=True)
        del model
        if orig_top5 is not None:
            orig1, orig5 = score(orig_top5, truth)
            diff = round(abs(ours1 - orig1) * len(photos) / 100)
            agree = sum(a[0] == b[0] for a, b in zip(ours_top5, orig_top5, strict=True))
            agree_crop = sum(a[0] == b[0] for a, b in zip(ours_top5, same_crop, strict=True))
            entry["original"] = {
                "runtime": note,
                "top1": orig1,
                "top5": orig5,
                "seconds": time.monotonic() - start,
                "top1_pred": [t[0] for t in orig_top5],
            }
            if same_crop is not orig_top5:
                entry["original"]["on_ours_crop"] = dict(zip(("top1", "top5"), score(same_crop, truth), strict=True))
            entry.update(
                {
                    "top1_diff_photos": diff,
                    "top1_agreement": agree,
                    "top1_agreement_same_crop": agree_crop,
                    "target_photos": TARGETS[runtime],
                    "within_target": diff <= TARGETS[runtime],
                }
            )
            rows.append(
                [
                    name,
                    size,
                    f"{ours1:.0f} / {ours5:.0f}",
                    f"{orig1:.0f} / {orig5:.0f}",
                    runtime,
                    f"{diff} (<= {TARGETS[runtime]}: {'ok' if diff <= TARGETS[runtime] else 'MISSED'})",
                    f"{agree} / {len(photos)}",
                    f"{agree_crop} / {len(photos)}",
                    paper.get(name) or "-",
                ]
            )
        else:
            entry["original"] = {"runtime": note} if note else None
            rows.append(
                [name, size, f"{ours1:.0f} / {ours5:.0f}", "-", note or runtime, "-", "-", "-", paper.get(name) or "-"]
            )
        results[name] = entry
        print_table(
            f"published ImageNet weights on {len(photos)} imagenet_sample photos (top-1 / top-5 %; "
            "+-~5 points of sampling noise)",
            [
                "name",
                "input",
                "ours top-1/5",
                "original top-1/5",
                "original runtime",
                "|diff| photos",
                "top-1 agree",
                "agree, ours' crop",
                "paper top-1 (224 px)",
            ],
            rows,
        )
    print(
        "agree, ours' crop: the original runtime fed the same pixels as ours (TF / TFLite always are; torchvision's "
        "row also runs its own PIL transform): a gap between the two agreement columns is resizing code, not the "
        "weights' conversion"
    )
    print(
        "paper top-1: V1 Table 6 / V2 Table 4, at 224 px (the TFLite widths run at 128 / 160 / 192 px, "
        "and are uint8-quantized: expect lower); 100 photos: +-~5 points of noise (and the sample's photos may be "
        "ImageNet training images, which flatters every column alike)"
    )
    write_results(
        "imagenet_weights",
        {
            "photos": len(photos),
            "sample": str(args.sample),
            "truth": truth,
            "photo_names": [f.name for f in photos],
            "targets_photos": TARGETS,
            "weights": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
