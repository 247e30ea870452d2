"""The shared VOC sets written out as YOLO files and as COCO json, read back by data=yolo and data=coco:
the same images and the same boxes, box for box, and the same evaluation samples.

For each set (``raccoon_voc``, ``fruits_voc``) and split: the VOC data module's records are written by
``mbtasks.data.yolo.write_yolo`` (images linked) and ``mbtasks.data.coco_export.write_coco`` into a
temporary folder, read back, and compared by image: labels equal, boxes within ``--atol`` pixels
(YOLO stores boxes normalised with 8 significant digits, COCO stores the same floats). Boxes are
compared in the decoded image's pixels (what training sees; a VOC size that disagrees with its image
is rescaled, as ``DetectionDataset`` does). YOLO has no ignore flag: VOC ``difficult`` boxes are left
out of the YOLO files (counted in the table) and of that comparison. Then every image of the split
goes through the evaluation pipeline of each data module (resize to 320) and the targets the network
would see are compared.

    python benchmarks/yolo_roundtrip.py [--quick] [--sets raccoon_voc fruits_voc] [--datasets ../shared/datasets]

Prints a table and writes benchmarks/results/yolo_roundtrip.json.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import albumentations as A
import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import numpy as np
from common import REPO, parser, print_table, write_results

from mbtasks.data.coco import CocoDataModule
from mbtasks.data.coco_export import write_coco
from mbtasks.data.voc import VocDataModule
from mbtasks.data.yolo import YoloDataModule, effective_boxes, write_yolo

SHARED = REPO.parent / "shared" / "datasets"
SIZE = 320


def eval_pipeline() -> A.Compose:
    return A.Compose([A.Resize(SIZE, SIZE)])


def compare_records(reference: list, other: list, atol: float, with_ignored: bool) -> dict:
    """Box-for-box comparison by image file name; ``reference`` boxes moved to decoded pixels."""
    by_name = {r.path.name: r for r in other}
    worst, mismatched, boxes, ignored = 0.0, [], 0, 0
    if sorted(by_name) != sorted(r.path.name for r in reference):
        return {
            "same_images": False,
            "max_abs_px": float("nan"),
            "mismatched": ["image lists differ"],
            "boxes": 0,
            "ignored_left_out": 0,
        }
    for rec in reference:
        got = by_name[rec.path.name]
        keep = np.ones(len(rec.boxes), bool) if with_ignored else ~rec.iscrowd
        ignored += int((~keep).sum())
        want = effective_boxes(rec)[0][keep]
        have = effective_boxes(got)[0]
        boxes += len(want)
        if (
            want.shape != have.shape
            or rec.labels[keep].tolist() != got.labels.tolist()
            or (with_ignored and rec.iscrowd.tolist() != got.iscrowd.tolist())
        ):
            mismatched.append(rec.path.name)
            continue
        if len(want):
            worst = max(worst, float(np.abs(want - have).max()))
            if worst > atol:
                mismatched.append(rec.path.name)
    return {
        "same_images": True,
        "max_abs_px": worst,
        "mismatched": mismatched[:10],
        "boxes": boxes,
        "ignored_left_out": ignored,
    }


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max()) if a.size else 0.0


def compare_samples(reference, other, limit: int | None, with_ignored: bool) -> float:
    """Largest difference between the evaluation images and targets (boxes in input pixels, ground truth
    in image pixels) of two datasets, by file name; ``with_ignored=False`` leaves ignore regions out."""
    by_name = {r.path.name: i for i, r in enumerate(other.records)}
    worst = 0.0
    for i, rec in enumerate(reference.records[:limit]):
        img_a, tgt_a = reference[i]
        img_b, tgt_b = other[by_name[rec.path.name]]
        gt_a, gt_b = tgt_a["gt_boxes"].numpy(), tgt_b["gt_boxes"].numpy()
        if not with_ignored:
            gt_a = gt_a[~tgt_a["gt_iscrowd"].numpy().astype(bool)]
            gt_b = gt_b[~tgt_b["gt_iscrowd"].numpy().astype(bool)]
        worst = max(
            worst,
            float((img_a - img_b).abs().max()),
            _max_abs(tgt_a["boxes"].numpy(), tgt_b["boxes"].numpy()),
            _max_abs(gt_a, gt_b),
        )
    return worst


def one_set(root: Path, tmp: Path, atol: float, limit: int | None) -> list[dict]:
    name = root.name
    pipe = {"eval_transforms": eval_pipeline(), "image_size": SIZE}
    start = time.perf_counter()
    voc = VocDataModule(str(root), val_split=None, **pipe)
    voc.setup("fit")
    times = {"voc": time.perf_counter() - start}
    start = time.perf_counter()
    yaml_file = write_yolo(voc, tmp / name / "yolo")
    written = {
        split: write_coco(voc, split, tmp / name / "coco" / f"{split}.json") for split in ("train", "val", "test")
    }
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    yolo = YoloDataModule(str(yaml_file), **pipe)
    yolo.setup("fit")
    times["yolo"] = time.perf_counter() - start
    start = time.perf_counter()
    coco = CocoDataModule(
        "/", *(str(v) for s in ("train", "val", "test") for v in (written[s].path, written[s].image_root)), **pipe
    )
    coco.setup("fit")
    times["coco"] = time.perf_counter() - start
    rows = []
    for split in ("train", "val", "test"):
        ref = voc.datasets[split]
        for fmt, dm in (("yolo", yolo), ("coco", coco)):
            with_ignored = fmt == "coco"
            result = compare_records(ref.records, dm.datasets[split].records, atol, with_ignored)
            sample_diff = compare_samples(ref, dm.datasets[split], limit, with_ignored) if split != "train" else None
            rows.append(
                {
                    "set": name,
                    "format": fmt,
                    "split": split,
                    "images": len(ref.records),
                    **result,
                    "eval_sample_max_abs": sample_diff,
                    "read_s": times[fmt],
                    "voc_read_s": times["voc"],
                    "write_s": write_s,
                    "identical": result["same_images"]
                    and not result["mismatched"]
                    and (sample_diff is None or sample_diff <= atol),
                }
            )
    return rows


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["raccoon_voc", "fruits_voc"])
    p.add_argument("--datasets", type=Path, default=SHARED, help=f"folder of the sets (default {SHARED})")
    p.add_argument("--atol", type=float, default=1e-3, help="pixels two boxes may differ by (default 1e-3)")
    args = p.parse_args()
    limit = 8 if args.quick else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            rows += one_set(args.datasets / name, Path(tmp), args.atol, limit)
    print_table(
        "VOC -> YOLO / COCO -> read back (box for box)",
        [
            "set",
            "format",
            "split",
            "images",
            "boxes",
            "ignored left out",
            "max |d| px",
            "eval max |d|",
            "read s",
            "identical",
        ],
        [
            [
                r["set"],
                r["format"],
                r["split"],
                r["images"],
                r["boxes"],
                r["ignored_left_out"],
                r["max_abs_px"],
                "-" if r["eval_sample_max_abs"] is None else r["eval_sample_max_abs"],
                r["read_s"],
                r["identical"],
            ]
            for r in rows
        ],
    )
    write_results(
        "yolo_roundtrip",
        {
            "atol_px": args.atol,
            "eval_image_size": SIZE,
            "quick": args.quick,
            "all_identical": all(r["identical"] for r in rows),
            "rows": rows,
        },
        args.out,
    )
    if not all(r["identical"] for r in rows):
        raise SystemExit("some splits differ: see the table")


if __name__ == "__main__":
    main()
