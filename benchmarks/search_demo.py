"""The Optuna search (``hparams_search=<task>_optuna``) against the shipped defaults, on one shared real
set per task, on **validation** only, every run at the same ``train.time``.

For each set: the default (the command a user types, ``train.test_after=false`` like the trials), then
the search (``hydra.sweeper.n_trials`` trials), then, with ``--rerun``, the best trial's
``best_overrides.txt`` run once more (one fresh run of the winner: how much of its lead was the luck
of being picked as the best of N). Numbers are the best validation value of each run (``epochs.jsonl``,
what ``best.ckpt`` holds and what a trial is scored on).

    python benchmarks/search_demo.py                                  # 3 sets, 8 trials x 1m (~45 min)
    python benchmarks/search_demo.py --tasks detection --trials 20 --budget 2m

Needs ``pip install -e ".[search]"`` and the ImageNet weights where ``backbone.pretrained=auto`` finds
them (the defaults start from them, so the searches include the ``finetune`` keys). Runs take the
whole machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import yaml
from common import REPO, RESULTS, print_table, write_results

from mbtasks.callbacks.epoch_log import read_epoch_log

DATASETS = REPO.parent / "shared" / "datasets"

# task -> (set, data group, input size, metric, extra overrides)
PLAN: dict[str, tuple[str, str, int, str, list[str]]] = {
    "classification": ("hymenoptera", "imagefolder", 160, "val/acc_top1", ["backbone=mobilenet_v2"]),
    "detection": ("raccoon_voc", "voc", 320, "val/map_50", []),
    "embedding": ("orl_faces", "faces", 96, "val/verification_acc", []),
}
COLUMNS = ["task", "set", "run", "val best", "val last", "steps", "wall s", "settings"]


def _mbtasks(args: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mbtasks", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"mbtasks failed ({' '.join(args)}):\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def _scores(run_dir: Path, key: str) -> tuple[float, float, int]:
    epochs = read_epoch_log(run_dir / "epochs.jsonl")
    vals = [e[key] for e in epochs if e.get(key) is not None]
    steps = max((e.get("step", 0) for e in epochs), default=0)
    return (max(vals), vals[-1], steps) if vals else (float("nan"), float("nan"), steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="1m", help="train.time of every run (default 1m)")
    p.add_argument("--trials", type=int, default=8, help="hydra.sweeper.n_trials (default 8)")
    p.add_argument("--tasks", default=",".join(PLAN))
    p.add_argument("--rerun", action="store_true", help="run the best trial's settings once more")
    p.add_argument("--runs", type=Path, default=RESULTS / "search_demo_runs")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    root = args.runs / time.strftime("%Y%m%d-%H%M%S")
    rows, records = [], []

    def add(task: str, name: str, run: str, run_dir: Path, wall: float | None, settings: str, key: str) -> None:
        best, last, steps = _scores(run_dir, key)
        rows.append(
            [task, name, run, f"{best:.3f}", f"{last:.3f}", str(steps), "" if wall is None else f"{wall:.0f}", settings]
        )
        records.append(
            {
                "task": task,
                "set": name,
                "run": run,
                "metric": key,
                "best": best,
                "last": last,
                "steps": steps,
                "wall_s": wall,
                "settings": settings,
                "run_dir": str(run_dir),
            }
        )
        print(" | ".join(rows[-1]), flush=True)
        write_results("search_demo", {"budget": args.budget, "trials": args.trials, "runs": records}, args.out)

    for task in args.tasks.split(","):
        name, group, size, key, extra = PLAN[task]
        data = [f"data={group}", f"data.root={DATASETS / name}", f"data.image_size={size}", *extra]
        common_args = [f"train.time={args.budget}", "trainer.enable_progress_bar=false"]

        default_dir = root / f"{task}-default"
        wall = _mbtasks([f"task={task}", *data, *common_args, "train.test_after=false", f"hydra.run.dir={default_dir}"])
        add(task, name, "default", default_dir, wall, "(none)", key)

        sweep_dir = root / f"{task}-search"
        wall = _mbtasks(
            [
                f"hparams_search={task}_optuna",
                *data,
                *common_args,
                f"hydra.sweeper.n_trials={args.trials}",
                f"hydra.sweep.dir={sweep_dir}",
            ]
        )
        fixed = {o.split("=", 1)[0] for o in data + common_args} | {"hparams_search", "train.test_after"}
        for trial in sorted((d for d in sweep_dir.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)):
            given = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text()) or []
            searched = [o for o in given if o.split("=", 1)[0] not in fixed]
            # the sweep's wall time is for all trials together: each trial's own is not measured
            add(task, name, f"trial {trial.name}", trial, None, " ".join(searched), key)
        best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
        chosen = (sweep_dir / "best_overrides.txt").read_text().split("\n")
        chosen = [o for o in chosen if o]
        rows.append(
            [
                task,
                name,
                "search best",
                f"{best['best_value']:.3f}",
                "",
                "",
                f"{wall:.0f} (all trials)",
                json.dumps(best["best_params"]),
            ]
        )
        records.append({"task": task, "set": name, "run": "search", "wall_s": wall, **best})
        print(" | ".join(rows[-1]), flush=True)

        if args.rerun:
            rerun_dir = root / f"{task}-rerun"
            wall = _mbtasks(
                [*chosen, "train.test_after=false", "trainer.enable_progress_bar=false", f"hydra.run.dir={rerun_dir}"]
            )
            add(task, name, "best, rerun", rerun_dir, wall, "best_overrides.txt", key)

    print_table(f"Optuna search vs default, {args.budget} a run, {args.trials} trials, validation", COLUMNS, rows)


if __name__ == "__main__":
    main()
