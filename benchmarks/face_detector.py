"""The offline face-detector recipe (``experiment=face_detector_photos``) from three kinds of training data,
each tested on dlib's ``testing.xml`` (5 group photos, 25 faces) that no variant trains or picks on:

- ``pasted``: composed scenes only (ORL faces pasted into photos without faces, ``data.real=null``);
- ``real``: dlib's 4 annotated ``training.xml`` photos only (``data.scenes_per_epoch=0``);
- ``both``: the recipe as it is (scenes + the real photos repeated ``data.real_repeat`` times).

Every variant trains for the same ``train.time`` and picks ``best.ckpt`` on the same 200 fixed pasted
val scenes (``data.val=pasted``: a real hold-out would be 1 photo, 2 faces); then
``mode=test data=dlib_xml data.root=<dlib_faces>`` reports mAP@0.5 (COCO, pycocotools) and
WIDER-style AP (``test/wider_ap_all``). Subprocesses, as a user runs them::

    python benchmarks/face_detector.py --time 20m [--variants pasted real both] [--shared ../shared/datasets]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {
    "pasted": ["data.real=null"],
    "real": ["data.scenes_per_epoch=0"],
    "both": [],
}


def run(args: list[str], log_file: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_file.open("w") as log:
        done = subprocess.run(
            [sys.executable, "-m", "mbtasks", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        tail = log_file.read_text()[-2000:]
        raise SystemExit(f"error: mbtasks {' '.join(args)} failed (exit {done.returncode}); {log_file}:\n{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time", default="20m", help="train.time of each variant (default 20m)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument(
        "--shared",
        type=Path,
        default=REPO.parent / "shared" / "datasets",
        help="folder holding orl_faces, hymenoptera, imagenet_sample, dlib_faces",
    )
    p.add_argument(
        "--pretrained", default="auto", help="backbone.pretrained (auto: ImageNet weights if on the machine)"
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "face_detector.json")
    p.add_argument("--runs", type=Path, default=REPO / "outputs" / "bench_face_detector")
    p.add_argument("extra", nargs="*", help="more overrides for every training run (key=value)")
    a = p.parse_args()
    shared = a.shared.resolve()
    for name in ("orl_faces", "hymenoptera", "imagenet_sample", "dlib_faces"):
        if not (shared / name).is_dir():
            raise SystemExit(f"error: --shared {shared}: no {name}/ in it")
    data = [
        f"data.faces={shared / 'orl_faces'}",
        f"data.backgrounds=[{shared / 'hymenoptera'},{shared / 'imagenet_sample'}]",
        f"data.real={shared / 'dlib_faces'}",
        "data.val=pasted",
    ]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for variant in a.variants:
        run_dir = (a.runs / f"{stamp}-{variant}").resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        run(
            [
                "experiment=face_detector_photos",
                *data,
                *VARIANTS[variant],
                f"train.time={a.time}",
                f"backbone.pretrained={a.pretrained}",
                f"hydra.run.dir={run_dir}",
                *a.extra,
            ],
            run_dir / "train.log",
        )
        train_s = time.time() - start
        test_dir = run_dir / "test_dlib"
        run(
            [
                "task=detection",
                "mode=test",
                f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
                "data=dlib_xml",
                f"data.root={shared / 'dlib_faces'}",
                f"hydra.run.dir={test_dir}",
            ],
            run_dir / "test.log",
        )
        metrics = json.loads((test_dir / "metrics.json").read_text())
        flat = metrics.get("metrics", metrics)
        log_text = (run_dir / "train.log").read_text()
        rows.append(
            {
                "variant": variant,
                "train_s": round(train_s, 1),
                "map_50": flat.get("test/map_50"),
                "wider_ap_all": flat.get("test/wider_ap_all"),
                "map": flat.get("test/map"),
                "pretrained_used": "fine-tuning from" in log_text,
                "run_dir": str(run_dir),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nface detector on dlib testing.xml (5 photos, 25 faces), train.time={a.time} each")
    print(f"{'variant':8} {'mAP@0.5':>8} {'WIDER AP':>9} {'mAP':>7} {'train s':>8} pretrained")
    for r in rows:

        def fmt(v):
            return f"{v:.3f}" if isinstance(v, int | float) else "-"

        print(
            f"{r['variant']:8} {fmt(r['map_50']):>8} {fmt(r['wider_ap_all']):>9} {fmt(r['map']):>7} "
            f"{r['train_s']:8.0f} {r['pretrained_used']}"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps(
            {"time": a.time, "shared": str(shared), "pretrained": a.pretrained, "extra": a.extra, "rows": rows},
            indent=2,
        )
    )
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
