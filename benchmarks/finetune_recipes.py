"""How the fine-tuning recipes (``finetune_recipe`` in ``conf/task/*.yaml``) were chosen: candidate
recipes on the **validation** splits of the shared real sets, from the published ImageNet weights,
same wall-clock budget each.

Every run is ``python -m mbtasks task=... data=... data.root=... data.image_size=... train.time=BUDGET``
plus the candidate's keys, in a subprocess. ``default`` is the shipped recipe as a user gets it
(nothing on the command line); the other candidates override keys of it. The number is the last
epoch's validation metric (``epochs.jsonl``) and the best one (what ``best.ckpt`` holds).

    python benchmarks/finetune_recipes.py                       # every task, 2 minutes a run (~40 min)
    python benchmarks/finetune_recipes.py --tasks classification --budget 1m

Needs the weights where ``backbone.pretrained=imagenet`` finds them (``python -m mbtasks weights list``):
the classification rows use ``backbone=mobilenet_v2`` (torchvision's file), detection and faces the
default ``mobilenet_v1`` 1.0 (timm's, or Google's TF graph converted). Runs take the whole machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
from common import REPO, RESULTS, print_table, write_results
from real_data import majority_rate

from mbtasks.callbacks.epoch_log import read_epoch_log

DATASETS = REPO.parent / "shared" / "datasets"

# task -> (sets with their data group and input size, metric key, candidates: name -> overrides)
PLAN: dict[str, tuple[dict[str, tuple[str, int]], str, dict[str, list[str]]]] = {
    "classification": (
        {"hymenoptera": ("imagefolder", 160), "natural_images": ("imagefolder", 96)},
        "val/acc_top1",
        {
            "default": [],
            "lr 1e-3 all layers no warm-up": ["optimizer.lr=0.001", "finetune.lr_mult=1.0", "finetune.freeze=false"],
            "default + batch 16": ["data.batch_size=16"],
            "lr 1e-3 all layers batch 16": [
                "optimizer.lr=0.001",
                "finetune.lr_mult=1.0",
                "finetune.freeze=false",
                "data.batch_size=16",
            ],
            "default + augment=light": ["augment=light"],
        },
    ),
    "detection": (
        {"fruits_voc": ("voc", 320), "raccoon_voc": ("voc", 320)},
        "val/map_50",
        {
            "default": [],
            "lr 1e-2 backbone x0.1": ["optimizer.lr=0.01", "finetune.lr_mult=0.1"],
            "default BN stats train": ["finetune.freeze_bn=false"],
            "lr 1e-2 backbone x0.1 BN stats train": [
                "optimizer.lr=0.01",
                "finetune.lr_mult=0.1",
                "finetune.freeze_bn=false",
            ],
            "default + augment=light": ["augment=light"],
            "default + augment=ssd": ["augment=ssd"],
        },
    ),
    "embedding": (
        {"orl_faces": ("faces", 96), "yalefaces": ("faces", 96)},
        "val/verification_acc",
        {
            "default": [],
            "lr 0.2 (from-scratch LR)": ["optimizer.lr=0.2"],
            "default BN stats train": ["finetune.freeze_bn=false"],
            "lr 0.2 BN stats train": ["optimizer.lr=0.2", "finetune.freeze_bn=false"],
            "default + augment=light": ["augment=light"],
        },
    ),
}
BACKBONE = {"classification": ["backbone=mobilenet_v2"], "detection": [], "embedding": []}


COLUMNS = ["task", "set", "recipe", "val last", "val best", "majority", "vals", "steps", "wall s"]


def run(task: str, name: str, group: str, size: int, budget: str, extra: list[str], run_dir: Path) -> dict:
    args = [
        f"task={task}",
        f"data={group}",
        f"data.root={DATASETS / name}",
        f"data.image_size={size}",
        f"train.time={budget}",
        *BACKBONE[task],
        *extra,
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
    ]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mbtasks", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"mbtasks failed ({' '.join(args)}):\n{out.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "epochs": read_epoch_log(run_dir / "epochs.jsonl"),
        "metrics": metrics,
        "wall_s": wall,
        "pretrained": "backbone.pretrained=imagenet" in out.stderr + out.stdout
        or "fine-tuning from them" in out.stderr + out.stdout,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="2m")
    p.add_argument("--tasks", default=",".join(PLAN))
    p.add_argument("--sets", default=None, help="only these sets (comma-separated)")
    p.add_argument("--candidates", default=None, help="only these candidate names (comma-separated)")
    p.add_argument("--runs", type=Path, default=RESULTS / "finetune_recipe_runs")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows, records = [], []
    for task in args.tasks.split(","):
        sets, key, candidates = PLAN[task]
        for name, (group, size) in sets.items():
            if args.sets and name not in args.sets.split(","):
                continue
            # classification: what always answering the most frequent class scores on the same split
            majority = majority_rate(name) if task == "classification" else None
            for cand, extra in candidates.items():
                if args.candidates and cand not in args.candidates.split(","):
                    continue
                run_dir = args.runs / stamp / f"{name}-{len(records)}"
                r = run(task, name, group, size, args.budget, extra, run_dir)
                vals = [e[key] for e in r["epochs"] if key in e]
                last, best = (vals[-1], max(vals)) if vals else (float("nan"), float("nan"))
                steps = max((e.get("step", 0) for e in r["epochs"]), default=0)
                rows.append(
                    [
                        task,
                        name,
                        cand,
                        f"{last:.3f}",
                        f"{best:.3f}",
                        "-" if majority is None else f"{majority:.3f}",
                        str(len(vals)),
                        str(steps),
                        f"{r['wall_s']:.0f}",
                    ]
                )
                records.append(
                    {
                        "task": task,
                        "set": name,
                        "size": size,
                        "candidate": cand,
                        "overrides": extra,
                        "metric": key,
                        "last": last,
                        "best": best,
                        "majority_val": majority,
                        "validations": len(vals),
                        "steps": steps,
                        "wall_s": r["wall_s"],
                        "run_dir": str(run_dir),
                    }
                )
                print(" | ".join(rows[-1]), flush=True)
                write_results("finetune_recipes", {"budget": args.budget, "runs": records}, args.out)
    print_table(f"fine-tuning recipes, {args.budget} a run, validation", COLUMNS, rows)


if __name__ == "__main__":
    main()
