"""``python -m mbtasks weights list | where | convert FILE...``: the published ImageNet weights on this machine.

``convert`` reads Google's TF-slim frozen graphs (``.pb``), TFLite files (``.tflite``) and torchvision /
timm MobileNet state dicts (``.pth``, ``.safetensors``), and writes our converted file into the weights
cache, where ``backbone.pretrained=imagenet`` and ``mbtasks.load("<name>:imagenet")`` find it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mbtasks.backbones.mobilenet_v1 import MobileNetV1
from mbtasks.backbones.mobilenet_v2 import MobileNetV2
from mbtasks.backbones.weights import STEM_KEYS, Converted, convert_by_position, foreign_origin, published
from mbtasks.backbones.weights.tf_graph import convert_tf_graph
from mbtasks.backbones.weights.tflite import convert_tflite
from mbtasks.errors import UserError

BACKBONES = {"MobileNetV1": MobileNetV1, "MobileNetV2": MobileNetV2}


def convert_state_dict(path: Path) -> Converted:
    """A torchvision / timm MobileNet classifier's state dict, converted by position."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    found = foreign_origin(state)
    if found is None:
        raise UserError(
            f"{path}: not a torchvision or timm MobileNet state dict (no {' or '.join(STEM_KEYS.values())} tensor)"
        )
    origin, arch = found
    stem = state[STEM_KEYS[origin]]
    errors = []
    for entry in (e for e in published.TABLE if e.arch == arch):
        backbone = BACKBONES[arch](entry.width, act="relu6")
        if backbone.stem[0].weight.shape != stem.shape:
            continue
        try:
            converted = convert_by_position(state, published.ClassifierLayout(backbone))
        except ValueError as err:
            errors.append(str(err))
            continue
        return Converted(
            converted, arch, entry.width, 224, act="relu6", padding="symmetric", source=f"{origin} {path.name}"
        )
    raise UserError(
        f"{path}: a {origin} {arch} state dict of no published width" + (f" ({errors[0]})" if errors else "")
    )


def convert_file(path: Path) -> Converted:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    readers = {
        ".pb": convert_tf_graph,
        ".tflite": convert_tflite,
        ".pth": convert_state_dict,
        ".pt": convert_state_dict,
        ".safetensors": convert_state_dict,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: unknown weight format {path.suffix!r}; expected one of {sorted(readers)}")
    try:
        return reader(path)
    except ValueError as err:
        raise UserError(str(err)) from err


def cmd_convert(files: Sequence[str]) -> int:
    for name in files:
        converted = convert_file(Path(name))
        entry = published.entry_for(converted.arch, converted.width, key=name)
        out = published.write_converted(converted, published.cached_file(entry))
        folded = ", BatchNorm folded" if converted.bn_folded else ""
        print(
            f"{name}: {entry.name} ({converted.source}; {converted.image_size} px, act {converted.act}, "
            f"padding {converted.padding}{folded}) -> {out}"
        )
        print(
            f"  now: backbone={published_group(entry)} backbone.width={entry.width:g} backbone.pretrained=imagenet, "
            f"or mbtasks.load('{entry.name}{published.SUFFIX}')"
        )
    return 0


def published_group(entry: published.Published) -> str:
    return {"MobileNetV1": "mobilenet_v1", "MobileNetV2": "mobilenet_v2"}[entry.arch]


def cmd_list() -> int:
    rows = [("name", "found", "where")]
    for entry in published.TABLE:
        found = published.find_local(entry)
        rows.append(
            (
                f"{entry.name}{published.SUFFIX}",
                found.origin if found else "-",
                str(found.path) if found else published.how_to_get(entry),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}")
    return 0


def cmd_where() -> int:
    print(f"1. torchvision: {Path(torch.hub.get_dir()) / 'checkpoints'}  ($TORCH_HOME/hub/checkpoints)")
    from huggingface_hub.constants import HF_HUB_CACHE

    print(f"2. timm: {HF_HUB_CACHE}  ($HF_HOME/hub)")
    print(f"3. converted: {published.cache_dir()}  ($MBTASKS_WEIGHTS_DIR)")
    print("4. online only: torchvision's / timm's download")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mbtasks weights", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every published weight and where it was found on this machine")
    sub.add_parser("where", help="the folders looked in, in order")
    conv = sub.add_parser("convert", help="convert .pb / .tflite / .pth / .safetensors files into the cache")
    conv.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            return cmd_convert(args.files)
        return cmd_list() if args.command == "list" else cmd_where()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
