"""What TF's SAME padding is worth for converted TF weights: ImageNet top-1 / top-5, tf_same vs symmetric.

Converts Google's published MobileNet V1 files in ../shared/weights (the TF-slim 1.0/224 frozen
graph and the uint8 TFLite 0.25/128, 0.5/160, 0.75/192) with
:mod:`mbtasks.backbones.weights` and scores our classifier on the 100 ImageNet validation photos
of ../shared/datasets/imagenet_sample (one per class of 100; the label is the wnid's index in
``classes.tsv``), twice: with ``backbone.padding=tf_same`` (what the weights were trained with)
and ``symmetric`` (PyTorch's). For the TFLite files the original runtime
(``ai_edge_litert``, the optional ``bench`` extra) scores the same crops, so the conversion's
top-1 can be held against the file's own.

Preprocessing as TF-slim's eval: the shorter side resized (bilinear) to ``size / 0.875``, the
centre ``size x size`` crop, RGB, ``(x / 255 - mean) / std`` with the converted mean / std (the
TFLite runtime gets the same crop as uint8). Each model at its own input size.

    python benchmarks/tf_padding.py

Prints a table and writes benchmarks/results/tf_padding.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import numpy as np
import torch
from common import REPO, parser, print_table, setup, write_results
from PIL import Image
from torchvision.transforms import CenterCrop, InterpolationMode, Resize

from mbtasks.backbones.mobilenet_v1 import MobileNetV1
from mbtasks.backbones.weights.tf_graph import convert_tf_graph
from mbtasks.backbones.weights.tflite import convert_tflite
from mbtasks.models.classifier import Classifier, ClassifierHead

SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "weights"
PHOTOS = SHARED / "datasets" / "imagenet_sample"
FILES = (
    "mobilenet_v1_1.0_224_imagenet_tf.pb",
    "mobilenet_v1_0.25_128_quant.tflite",
    "mobilenet_v1_0.5_160_quant.tflite",
    "mobilenet_v1_0.75_192_quant.tflite",
)
CROP_FRACTION = 0.875
BATCH = 25


def load_photos(folder: Path) -> tuple[list[Path], np.ndarray]:
    """The photos (``<wnid>_<name>.JPEG``) and their labels (the wnid's row in ``classes.tsv``)."""
    index = {}
    for line in (folder / "classes.tsv").read_text().splitlines():
        i, wnid, _ = line.split("\t", 2)
        index[wnid] = int(i)
    paths = sorted(folder.glob("*.JPEG"))
    return paths, np.array([index[p.name.split("_", 1)[0]] for p in paths])


def crops(paths: list[Path], size: int) -> np.ndarray:
    """TF-slim's eval crop: shorter side to ``size / 0.875`` (bilinear), centre crop; ``(N, H, W, 3)`` uint8."""
    resize = Resize(round(size / CROP_FRACTION), interpolation=InterpolationMode.BILINEAR)
    crop = CenterCrop(size)
    return np.stack([np.asarray(crop(resize(Image.open(p).convert("RGB")))) for p in paths])


def topk(logits: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """Photos right at top-1 and top-5 (counts of ``len(labels)``)."""
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return int((top5[:, 0] == labels).sum()), int((top5 == labels[:, None]).any(axis=1).sum())


def ours(converted, padding: str, pixels: np.ndarray) -> np.ndarray:
    """Our classifier's 1000 logits with ``backbone.padding=padding``."""
    backbone = MobileNetV1(converted.width, act=converted.act, padding=padding)
    model = Classifier(backbone, ClassifierHead(backbone.num_features, 1000)).eval()
    model.load_state_dict(converted.state_dict, strict=True)
    mean = torch.tensor(converted.mean).view(1, 3, 1, 1)
    std = torch.tensor(converted.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        return torch.cat([model(b) for b in x.split(BATCH)]).numpy()


def litert(path: Path, pixels: np.ndarray) -> np.ndarray:
    """The TFLite runtime's 1000 logits (dequantised; background dropped) on uint8 crops."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=torch.get_num_threads())
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = out["quantization"]
    rows = []
    for img in pixels:
        interp.set_tensor(inp["index"], img[None].astype(inp["dtype"]))
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float32).reshape(-1)
        rows.append((y - zero) * scale if scale else y)
    return np.stack(rows)[:, 1:]


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args.threads)
    paths, labels = load_photos(PHOTOS)
    n = len(paths)
    rows, results = [], {}
    for name in FILES:
        path = WEIGHTS / name
        start = time.perf_counter()
        converted = convert_tf_graph(path) if path.suffix == ".pb" else convert_tflite(path)
        pixels = crops(paths, converted.image_size)
        entry = {"width": converted.width, "image_size": converted.image_size, "photos": n}
        for padding in ("tf_same", "symmetric"):
            entry[padding] = dict(zip(("top1", "top5"), topk(ours(converted, padding, pixels), labels), strict=True))
        if path.suffix == ".tflite":
            entry["litert"] = dict(zip(("top1", "top5"), topk(litert(path, pixels), labels), strict=True))
        entry["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = entry
        rt = entry.get("litert")
        rows.append(
            [
                name,
                f"{converted.width}/{converted.image_size}",
                f"{entry['tf_same']['top1']} / {entry['tf_same']['top5']}",
                f"{entry['symmetric']['top1']} / {entry['symmetric']['top5']}",
                f"{rt['top1']} / {rt['top5']}" if rt else "-",
                entry["tf_same"]["top1"] - entry["symmetric"]["top1"],
            ]
        )
    print_table(
        f"Converted TF MobileNet V1 on {n} ImageNet val photos: top-1 / top-5 (photos right)",
        ["file", "width/size", "ours tf_same", "ours symmetric", "TFLite runtime", "top-1 tf_same - sym"],
        rows,
    )
    write_results("tf_padding", {"photos": n, "crop_fraction": CROP_FRACTION, "results": results}, args.out)


if __name__ == "__main__":
    main()
