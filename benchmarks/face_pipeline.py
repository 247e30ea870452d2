"""The detect-then-embed chain on the synthetic face scenes: what the detector costs identification.

Measures on the held-out test scenes (identities never seen by either network):

- detection recall of faces (IoU >= 0.5, detections with score >= --score-threshold),
- identification accuracy of the chain: detect, crop, embed, nearest gallery identity
  (a missed face counts as wrong), closed-set and at the embedder's threshold,
- the same embedder on the ground-truth boxes, cropped the same way (a perfect detector).

    python -m mbtasks task=detection data=synthetic_face_scenes backbone.width=0.5 trainer.max_epochs=12
    python -m mbtasks task=embedding backbone.width=0.5 trainer.max_epochs=8
    python benchmarks/face_pipeline.py --detector <det run>/checkpoints/best.ckpt \\
        --embedder <emb run>/checkpoints/best.ckpt [--root data/synthetic_face_scenes] [--margin 0.0]

Prints a table and writes benchmarks/results/face_pipeline.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
from common import print_table, write_results

from mbtasks.tasks.embedding.identify import Pipeline
from mbtasks.tasks.embedding.identify_eval import evaluate_on_coco


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detector", required=True, type=Path)
    p.add_argument("--embedder", required=True, type=Path)
    p.add_argument("--root", type=Path, default=Path("data/synthetic_face_scenes"))
    p.add_argument("--split", default="test")
    # default: predict.crop_margin / predict.score_threshold, as the CLI (identify.pipeline_defaults)
    p.add_argument("--margin", type=float, default=None)
    p.add_argument("--score-threshold", type=float, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    pipeline = Pipeline(
        args.detector, args.embedder, margin=args.margin, score_threshold=args.score_threshold, device="cpu"
    )
    start = time.perf_counter()
    args.margin, args.score_threshold = pipeline.margin, pipeline.score_threshold
    metrics = evaluate_on_coco(
        pipeline,
        args.root / "annotations" / f"instances_{args.split}.json",
        args.root / args.split,
        args.root / "gallery",
    )
    seconds = time.perf_counter() - start
    rows = [[k, f"{v:.4f}" if k not in ("faces", "false_detections") else f"{int(v)}"] for k, v in metrics.items()]
    print_table(
        f"face pipeline on {args.root / args.split} (margin {args.margin}, score >= {args.score_threshold})",
        ["metric", "value"],
        rows,
    )
    write_results(
        "face_pipeline",
        {
            "metrics": metrics,
            "seconds": round(seconds, 1),
            "detector": str(args.detector),
            "embedder": str(args.embedder),
            "margin": args.margin,
            "score_threshold": args.score_threshold,
            "split": args.split,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
