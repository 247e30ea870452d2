"""mode=check: scan the configured data set before training; print a summary, write ``check.json``.

Each data module's own ``setup`` does the parsing and validation (the same code a training
run uses), then every image of every split is decoded once. Exits with an error (CLI code 2)
when the data cannot train.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from mbtasks.data.io import ImageReadError, is_image_file, read_rgb
from mbtasks.errors import DataError
from mbtasks.modes.common import write_config, write_json_atomic

log = logging.getLogger(__name__)

REPORT = "check.json"
# How many individual files a report lists per problem before only counting.
SHOW = 50


@contextlib.contextmanager
def recording_annotation_reports() -> Iterator[dict[str, Counter]]:
    """Collect what the detection readers drop (``AnnotationReport.add``) while the block runs.

    The readers keep only a log of what they skipped; recording at the one place they
    count keeps the parsing in the data modules.
    """
    from mbtasks.data.detection import AnnotationReport

    dropped: dict[str, Counter] = defaultdict(Counter)
    original = AnnotationReport.add

    def add(self, reason: str, message: str) -> None:
        dropped[self.source][reason] += 1
        original(self, reason, message)

    AnnotationReport.add = add
    try:
        yield dropped
    finally:
        AnnotationReport.add = original


def _decode_all(paths: list[Path], unreadable: dict[str, str], sizes: dict[str, tuple[int, int]] | None = None) -> set[str]:
    """Decode every file once; returns the readable ones and records the rest in ``unreadable``
    (and the decoded ``(width, height)`` of each readable one in ``sizes``, when given)."""
    ok = set()
    for path in paths:
        key = str(path)
        if key in unreadable:
            continue
        try:
            h, w = read_rgb(path).shape[:2]
            ok.add(key)
            if sizes is not None:
                sizes[key] = (w, h)
        except ImageReadError as err:
            unreadable[key] = str(err.__cause__ or err)
    return ok


def _ignored_files(folders: list[Path]) -> list[str]:
    """Files in image folders that are not images by extension (loaders ignore them)."""
    out = []
    for folder in folders:
        if folder.is_dir():
            out.extend(str(p) for p in sorted(folder.iterdir()) if p.is_file() and not is_image_file(p)
                       and not p.name.startswith("."))
    return out


def _classification(dm, report: dict, unreadable: dict[str, str]) -> None:
    names = list(dm.class_names)
    folders = set()
    for split, ds in dm.datasets.items():
        readable = _decode_all([p for p, _ in ds.samples], unreadable)
        hist = Counter(names[label] for p, label in ds.samples if str(p) in readable)
        report["splits"][split] = {"images": len(ds.samples), "readable": len(readable),
                                   "classes": {n: hist.get(n, 0) for n in names}}
        folders.update(p.parent for p, _ in ds.samples)
        if split == "train":
            empty = [n for n in names if hist.get(n, 0) == 0]
            if empty:
                report["errors"].append(f"{dm.root}: training classes {empty} have no readable image")
    ignored = _ignored_files(sorted(folders))
    if ignored:
        report["warnings"].append(f"{len(ignored)} non-image files are ignored (first: {ignored[0]})")
    report["ignored_files"] = ignored[:SHOW]


def _detection(dm, report: dict, unreadable: dict[str, str], dropped: dict[str, Counter]) -> None:
    from mbtasks.data.detection import exif_orientation, turning_orientation

    names = list(dm.class_names)
    sizes: dict[str, tuple[int, int]] = {}
    rescaled: dict[str, str] = {}
    rotated = 0
    for split, ds in dm.datasets.items():
        readable = _decode_all([r.path for r in ds.records], unreadable, sizes)
        usable = [r for r in ds.records if str(r.path) in readable]
        # Training rescales these boxes by the size ratio (DetectionDataset); say so before it does.
        rescaled.update({str(r.path): f"annotated {r.width}x{r.height}, decoded {sizes[str(r.path)][0]}x"
                         f"{sizes[str(r.path)][1]}" for r in usable if r.width and r.height
                         and sizes.get(str(r.path)) != (r.width, r.height) and not turning_orientation(r, sizes[str(r.path)])})
        hist = Counter(names[int(label)] for r in usable for label, crowd in zip(r.labels, r.iscrowd, strict=True)
                       if not crowd)
        backgrounds = sum(r.num_trainable == 0 for r in usable)
        # images that EXIF turns or mirrors when decoded (their boxes are turned with them)
        turned = sum(exif_orientation(r.path) != 1 for r in usable)
        rotated += turned
        report["splits"][split] = {"images": len(ds.records), "readable": len(readable), "backgrounds": backgrounds,
                                   "boxes": int(sum(hist.values())), "exif_rotated": turned,
                                   "classes": {n: hist.get(n, 0) for n in names}}
        if split == "train" and not any(r.num_trainable for r in usable):
            report["errors"].append(f"{getattr(dm, 'root', '')}: no readable training image has a usable box")
    report["rescaled"] = {"count": len(rescaled), "first": dict(list(rescaled.items())[:SHOW])}
    if rescaled:
        first = next(iter(rescaled))
        report["warnings"].append(f"{len(rescaled)} images differ in size from their annotations; their boxes are "
                                  f"rescaled in training (first: {first}: {rescaled[first]})")
    if rotated:
        report["warnings"].append(f"{rotated} images carry an EXIF rotation; boxes annotated on the stored pixels "
                                  "are turned with the image (see docs/detection.md)")
    report["dropped"] = {source: dict(counts) for source, counts in dropped.items()}
    for source, counts in dropped.items():
        report["warnings"].append(f"{source}: dropped " + ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())))


def _faces(dm, report: dict, unreadable: dict[str, str]) -> None:
    from mbtasks.data.faces import scan_identities

    identities = scan_identities(dm.root)
    few = sorted(n for n, images in identities.items() if len(images) < 2)
    report["identities"] = {"total": len(identities), "with_one_image": len(few), "first_with_one_image": few[:SHOW],
                            **{f"{k}_identities": v for k, v in dm.stats.items() if k in ("train", "val", "test")}}
    if few:
        report["warnings"].append(f"{len(few)} identities have a single image (negatives only; first: {few[0]})")
    samples = dm.train_set.samples
    readable = _decode_all([p for p, _ in samples], unreadable)
    per_label = Counter(label for p, label in samples if str(p) in readable)
    report["splits"]["train"] = {"images": len(samples), "readable": len(readable), "identities": len(per_label)}
    if sum(n >= 2 for n in per_label.values()) < 2:
        report["errors"].append(f"{dm.root}: fewer than 2 training identities with >= 2 readable images")
    for split, ds in dm.eval_sets.items():
        ok = _decode_all(list(ds.images), unreadable)
        report["splits"][split] = {"images": len(ds.images), "readable": len(ok), "pairs": len(dm.pair_sets[split])}


def scan(cfg: DictConfig) -> dict[str, Any]:
    """The check report of ``cfg.data`` (no training, no model)."""
    report: dict[str, Any] = {"data": str(cfg.data.get("_target_")), "root": str(cfg.data.get("root")),
                              "splits": {}, "errors": [], "warnings": []}
    unreadable: dict[str, str] = {}
    with recording_annotation_reports() as dropped:
        try:
            datamodule = instantiate(cfg.data)
            datamodule.setup("fit")
        except DataError as err:
            report["errors"].append(str(err))
            datamodule = None
    if datamodule is not None:
        if hasattr(datamodule, "train_set"):
            _faces(datamodule, report, unreadable)
        elif hasattr(datamodule, "datasets") and hasattr(next(iter(datamodule.datasets.values()), None), "records"):
            _detection(datamodule, report, unreadable, dropped)
        else:
            _classification(datamodule, report, unreadable)
    if unreadable:
        report["warnings"].append(f"{len(unreadable)} unreadable images are skipped in training "
                                  f"(first: {next(iter(unreadable))})")
    report["unreadable"] = {"count": len(unreadable), "first": dict(list(unreadable.items())[:SHOW])}
    report["ok"] = not report["errors"]
    return report


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"data check: {report['root']}")
    columns = sorted({k for s in report["splits"].values() for k, v in s.items() if not isinstance(v, dict)})
    table.add_column("split")
    for col in columns:
        table.add_column(col, justify="right")
    for split, stats in report["splits"].items():
        table.add_row(split, *(str(stats.get(c, "")) for c in columns))
    console = Console(stderr=False)
    console.print(table)
    classes = report["splits"].get("train", {}).get("classes")
    if classes:
        hist = Table(title="training classes")
        hist.add_column("class")
        hist.add_column("count", justify="right")
        for name, n in classes.items():
            hist.add_row(name, str(n))
        console.print(hist)
    for line in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {line}")
    for line in report["errors"]:
        console.print(f"[red]cannot train:[/red] {line}")


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    write_config(run_dir, cfg)
    report = scan(cfg)
    write_json_atomic(run_dir / REPORT, report)
    print_report(report)
    log.info("check report: %s", run_dir / REPORT)
    if not report["ok"]:
        raise DataError(f"data check failed ({len(report['errors'])} problems, see {run_dir / REPORT}): "
                        f"{report['errors'][0]}")
    return report
