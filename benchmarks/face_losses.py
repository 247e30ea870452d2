"""Which embedding loss for faces: triplet, ArcFace, CosFace and SphereFace, each trained on the shared
face sets (ORL, Yale) at one wall-clock budget, compared on **validation** verification accuracy
(held-out identities, LFW protocol); the test accuracy is printed beside it, never used to choose.

Every run is the real CLI in a subprocess, as a user types it:
``python -m mbtasks task=embedding data=faces data.root=SET data.image_size=SIZE train.time=BUDGET
task.loss=LOSS seed=SEED`` plus the loss's recipe (``LOSS_RECIPES``: the margin losses clip the
gradient norm at 5, as insightface's arcface_torch does; without it, scale-64 logits overflow within a
few steps at the embedding task's SGD rate) and any ``--set`` keys. The numbers per run: the last
and the best validation accuracy (``epochs.jsonl``; best.ckpt holds the best), the test accuracy of
best.ckpt, and the stored threshold. A run that diverges is reported as failed, with its error.

    python benchmarks/face_losses.py --time 5m --seeds 0 1 2          # the choice: 2 sets x 4 losses x 3 seeds
    python benchmarks/face_losses.py --time 10s --datasets orl --losses cosface   # a smoke run
    python benchmarks/face_losses.py --time 5m --set backbone=mobilefacenet --set cosface:task.cosface_margin=0.2

The choice is the loss with the highest mean best-validation accuracy over sets and seeds; the table
shows its spread, and a margin inside one standard deviation is no reason to change a default.
Runs take the whole machine: measure on an idle one. Writes benchmarks/results/face_losses.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
from common import REPO, RESULTS, print_table, write_results

from mbtasks.callbacks.epoch_log import read_epoch_log

# name -> (folder under --datasets-dir, held-out validation identities, test identities), as faces_real.py
DATASETS = {"orl": ("orl_faces", 6, 10), "yale": ("yalefaces", 3, 4)}
LOSSES = ("triplet", "arcface", "cosface", "sphereface")
# keys each loss runs with on top of the defaults (none: the task clips the margin losses' gradients itself)
LOSS_RECIPES: dict[str, list[str]] = {loss: [] for loss in LOSSES}
KEY = "val/verification_acc"
COLUMNS = ["set", "loss", "seed", "start", "val last", "val best", "test (best.ckpt)", "threshold", "epochs", "wall s"]


def loss_overrides(loss: str, sets: list[str]) -> list[str]:
    """``--set`` keys for ``loss``: plain ``KEY=VALUE`` for every loss, ``LOSS:KEY=VALUE`` for that one."""
    out = list(LOSS_RECIPES[loss])
    for item in sets:
        head, _, rest = item.partition(":")
        if rest and "=" not in head:
            if head not in LOSSES:
                raise SystemExit(f"--set {item}: {head!r} is not a loss; expected one of {list(LOSSES)}")
            if head == loss:
                out.append(rest)
        else:
            out.append(item)
    return out


def run(
    root: Path, val: int, test: int, size: int, loss: str, seed: int, budget: str, extra: list[str], run_dir: Path
) -> dict:
    args = [
        "task=embedding",
        "data=faces",
        f"data.root={root}",
        f"data.image_size={size}",
        f"data.val_identities={val}",
        f"data.test_identities={test}",
        f"train.time={budget}",
        f"task.loss={loss}",
        f"seed={seed}",
        *extra,
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
    ]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mbtasks", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    log_file = run_dir / "__main__.log"
    log = out.stderr + out.stdout + (log_file.read_text() if log_file.is_file() else "")
    # backbone.pretrained=auto starts from ImageNet weights where this machine has them
    start_from = "imagenet" if "backbone.pretrained=imagenet" in log else "scratch"
    record = {"args": args, "wall_s": wall, "run_dir": str(run_dir), "start": start_from}
    if out.returncode != 0:
        lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()]
        return {
            **record,
            "error": next(
                (ln for ln in reversed(lines) if "error" in ln.lower()),
                lines[-1] if lines else f"exit {out.returncode}",
            ),
        }
    epochs = read_epoch_log(run_dir / "epochs.jsonl")
    vals = [e[KEY] for e in epochs if KEY in e]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        **record,
        "val_last": vals[-1] if vals else float("nan"),
        "val_best": max(vals, default=float("nan")),
        "validations": len(vals),
        "test": metrics.get("test/verification_acc"),
        "threshold": metrics.get("val/threshold"),
        "train_loss": metrics.get("train/loss"),
    }


def summary(records: list[dict]) -> list[list]:
    """Per loss: mean and standard deviation of the best validation accuracy over every set and seed."""
    rows = []
    for loss in dict.fromkeys(r["loss"] for r in records):
        ok = [r["val_best"] for r in records if r["loss"] == loss and "error" not in r]
        failed = sum(1 for r in records if r["loss"] == loss and "error" in r)
        mean = statistics.fmean(ok) if ok else float("nan")
        std = statistics.stdev(ok) if len(ok) > 1 else 0.0
        rows.append([loss, f"{mean:.3f}", f"{std:.3f}", str(len(ok)), str(failed)])
    return sorted(rows, key=lambda r: -float(r[1]) if r[1] != "nan" else 1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--time", default="5m", help="train.time of every run (e.g. 10s, 5m)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument(
        "--datasets-dir",
        type=Path,
        default=Path(os.environ.get("MBTASKS_FACES_DIR", REPO.parent / "shared" / "datasets")),
    )
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument(
        "--image-size", type=int, default=112, help="data.image_size (112: ORL's height, MobileFaceNet's input)"
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="[LOSS:]KEY=VALUE",
        help="an override for every run, or with LOSS: for that loss's runs only (repeatable)",
    )
    p.add_argument("--runs", type=Path, default=RESULTS / "face_loss_runs")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows, records = [], []
    for name in args.datasets:
        folder, val, test = DATASETS[name]
        root = args.datasets_dir / folder
        if not root.is_dir():
            raise SystemExit(f"{root}: not found (give --datasets-dir or MBTASKS_FACES_DIR)")
        for seed in args.seeds:
            for loss in args.losses:
                extra = loss_overrides(loss, args.sets)
                r = run(
                    root,
                    val,
                    test,
                    args.image_size,
                    loss,
                    seed,
                    args.time,
                    extra,
                    args.runs / stamp / f"{name}-{loss}-{seed}",
                )
                records.append({"set": name, "loss": loss, "seed": seed, "overrides": extra, **r})
                if "error" in r:
                    rows.append([name, loss, str(seed), r["start"], "failed", "-", "-", "-", "-", f"{r['wall_s']:.0f}"])
                    print(f"{name} {loss} seed {seed}: failed: {r['error']}", flush=True)
                else:
                    test_acc = "-" if r["test"] is None else f"{r['test']:.3f}"
                    threshold = "-" if r["threshold"] is None else f"{r['threshold']:.3f}"
                    rows.append(
                        [
                            name,
                            loss,
                            str(seed),
                            r["start"],
                            f"{r['val_last']:.3f}",
                            f"{r['val_best']:.3f}",
                            test_acc,
                            threshold,
                            str(r["validations"]),
                            f"{r['wall_s']:.0f}",
                        ]
                    )
                    print(" | ".join(rows[-1]), flush=True)
                write_results(
                    "face_losses", {"time": args.time, "image_size": args.image_size, "runs": records}, args.out
                )
    print_table(f"embedding losses on face sets, train.time={args.time}, {args.image_size} px", COLUMNS, rows)
    ranked = summary(records)
    print_table(
        "best validation verification accuracy over sets and seeds (the choice: first row)",
        ["loss", "mean", "std", "runs", "failed"],
        ranked,
    )
    if ranked and ranked[0][1] != "nan":
        print(f"choice on validation: task.loss={ranked[0][0]} (mean {ranked[0][1]} +- {ranked[0][2]})")


if __name__ == "__main__":
    main()
