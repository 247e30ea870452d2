"""mode=check for faces: identities (and those with one image), readable images and pairs per split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from mbtasks.tasks.spec import CHECK_SHOW


def check_data(description: dict, decode: Callable, report: dict) -> None:
    """``description``: a faces data module's ``describe()`` (``identities``, ``train``, ``eval``)."""
    identities = description["identities"]
    few = sorted(n for n, images in identities.items() if len(images) < 2)
    report["identities"] = {
        "total": len(identities),
        "with_one_image": len(few),
        "first_with_one_image": few[:CHECK_SHOW],
        **{f"{k}_identities": v for k, v in description["stats"].items() if k in ("train", "val", "test")},
    }
    if few:
        report["warnings"].append(f"{len(few)} identities have a single image (negatives only; first: {few[0]})")
    samples = description["train"]
    readable = decode([p for p, _ in samples])
    per_label = Counter(label for p, label in samples if str(p) in readable)
    report["splits"]["train"] = {"images": len(samples), "readable": len(readable), "identities": len(per_label)}
    if sum(n >= 2 for n in per_label.values()) < 2:
        report["errors"].append(f"{description['root']}: fewer than 2 training identities with >= 2 readable images")
    for split, (images, pairs) in description["eval"].items():
        ok = decode(list(images))
        report["splits"][split] = {"images": len(images), "readable": len(ok), "pairs": pairs}
