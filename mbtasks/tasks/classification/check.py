"""mode=check for classification: images and readable images per split, the class histogram."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from mbtasks.data.image_files import is_image_file
from mbtasks.tasks.spec import CHECK_SHOW


def ignored_files(folders: list[Path]) -> list[str]:
    """Files in image folders that are not images by extension (loaders ignore them)."""
    out = []
    for folder in folders:
        if folder.is_dir():
            out.extend(
                str(p)
                for p in sorted(folder.iterdir())
                if p.is_file() and not is_image_file(p) and not p.name.startswith(".")
            )
    return out


def check_data(description: dict, decode: Callable, report: dict) -> None:
    """``description``: an image-folder data module's ``describe()`` (``splits``: ``[(path, label)]``)."""
    names = list(description["class_names"])
    folders = set()
    for split, samples in description["splits"].items():
        readable = decode([p for p, _ in samples])
        hist = Counter(names[label] for p, label in samples if str(p) in readable)
        report["splits"][split] = {
            "images": len(samples),
            "readable": len(readable),
            "classes": {n: hist.get(n, 0) for n in names},
        }
        folders.update(Path(p).parent for p, _ in samples)
        if split == "train":
            empty = [n for n in names if hist.get(n, 0) == 0]
            if empty:
                report["errors"].append(f"{description['root']}: training classes {empty} have no readable image")
    ignored = ignored_files(sorted(folders))
    if ignored:
        report["warnings"].append(f"{len(ignored)} non-image files are ignored (first: {ignored[0]})")
    report["ignored_files"] = ignored[:CHECK_SHOW]
