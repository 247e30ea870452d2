"""mode=check for detection: images, boxes, ignore regions, backgrounds and EXIF turns per split; what the
readers dropped and what they fixed and kept."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from mbtasks.data.detection import exif_orientation, turning_orientation
from mbtasks.tasks.spec import CHECK_SHOW


def check_data(description: dict, decode: Callable, report: dict) -> None:
    """``description``: a detection data module's ``describe()`` (``splits``: image records, ``dropped``,
    ``kept``)."""
    names = list(description["class_names"])
    sizes: dict[str, tuple[int, int]] = {}
    rescaled: dict[str, str] = {}
    rotated = 0
    for split, records in description["splits"].items():
        readable = decode([r.path for r in records], sizes)
        usable = [r for r in records if str(r.path) in readable]
        # Training rescales these boxes by the size ratio (DetectionDataset); say so before it does.
        rescaled.update(
            {
                str(r.path): f"annotated {r.width}x{r.height}, decoded {sizes[str(r.path)][0]}x{sizes[str(r.path)][1]}"
                for r in usable
                if r.width
                and r.height
                and sizes.get(str(r.path)) != (r.width, r.height)
                and not turning_orientation(r, sizes[str(r.path)])
            }
        )
        hist = Counter(
            names[int(label)] for r in usable for label, crowd in zip(r.labels, r.iscrowd, strict=True) if not crowd
        )
        backgrounds = sum(r.num_trainable == 0 for r in usable)
        # images that EXIF turns or mirrors when decoded (their boxes are turned with them)
        turned = sum(exif_orientation(r.path) != 1 for r in usable)
        rotated += turned
        ignored = int(sum(int(r.iscrowd.sum()) for r in usable))
        report["splits"][split] = {
            "images": len(records),
            "readable": len(readable),
            "backgrounds": backgrounds,
            "boxes": int(sum(hist.values())),
            "ignored": ignored,
            "exif_rotated": turned,
            "classes": {n: hist.get(n, 0) for n in names},
        }
        if split == "train" and not any(r.num_trainable for r in usable):
            report["errors"].append(f"{description['root']}: no readable training image has a usable box")
    report["rescaled"] = {"count": len(rescaled), "first": dict(list(rescaled.items())[:CHECK_SHOW])}
    if rescaled:
        first = next(iter(rescaled))
        report["warnings"].append(
            f"{len(rescaled)} images differ in size from their annotations; their boxes are "
            f"rescaled in training (first: {first}: {rescaled[first]})"
        )
    if rotated:
        report["warnings"].append(
            f"{rotated} images carry an EXIF rotation; boxes annotated on the stored pixels "
            "are turned with the image (see docs/detection.md)"
        )
    dropped = description["dropped"]
    report["dropped"] = dropped
    for source, counts in dropped.items():
        report["warnings"].append(
            f"{source}: dropped " + ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        )
    # fixed or kept as they are (boxes clipped to the image, images without labels kept as negatives...)
    kept = description.get("kept", {})
    report["kept"] = kept
    for source, counts in kept.items():
        report["warnings"].append(
            f"{source}: kept " + ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        )
