"""Training throughput of the whole loop (mbtasks' train mode) against a bare training step.

For each task's default config, and optionally a shared real set, the script runs

- the full loop: ``mode=train`` through :func:`mbtasks.modes.run.dispatch`, the function
  ``python -m mbtasks`` calls (data loading in ``data.num_workers`` processes, augmentation,
  Lightning, logging, metrics, validation every epoch, checkpoints), for ``--epochs`` epochs
  of at most ``--steps`` batches; training images per second from the end of the first
  training batch (worker start-up left out) to the end of fit (the last validation and
  checkpoint included);
- the bare loop: the same model, optimizer, precision and memory format, ``--bare-steps``
  steps of forward + loss + backward + optimizer step on one batch pre-loaded as a tensor;
  measured before and after the full loop and averaged, so load drift hits both alike;

and prints img/s of both and full / bare (target >= 0.9). ``--budget 5m`` runs the full loop as a
``train.time`` run instead (validation as the budget rule sets it, final epoch validated) and adds
the split the run itself logs at its end: time in training steps / validation / everything else
(target: >= 85% / <= 10% / <= 5%). As full and bare run one after the other,
load from other processes moves that ratio; the full loop's own split of its time (inside the
training steps / in validation / the rest: waiting for data, checkpoints) is measured within
one run and is the steadier number. ``--no-worker-thread-limit`` runs the
loader workers with OpenCV's default thread pool (without :func:`mbtasks.data.base.limit_worker_threads`).

    python benchmarks/train_throughput.py [--tasks classification detection embedding] [--real fruits_voc]
    python benchmarks/train_throughput.py --tasks detection -- trainer.precision=bf16-mixed
    python benchmarks/train_throughput.py --budget 5m --real hymenoptera fruits_voc orl_faces

Prints a table and writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import lightning as L
import torch
from common import parser, print_table, setup, write_results
from hydra.utils import instantiate

import mbtasks.data.base
import mbtasks.data.faces
from mbtasks.tasks import build_task
from mbtasks.tasks.optim import split_no_decay

# Real sets: folder and the overrides that make them a default run of their task.
REAL_SETS = {
    "hymenoptera": ("hymenoptera", ["task=classification", "data=imagefolder"]),
    # the yardstick's from-scratch size (benchmarks/real_data.py): thumbnails, a cheap step
    "natural_images": (
        "natural_images",
        ["task=classification", "data=imagefolder", "data.image_size=64", "backbone.pretrained=null"],
    ),
    "fruits_voc": ("fruits_voc", ["task=detection", "data=voc"]),
    "raccoon_voc": ("raccoon_voc", ["task=detection", "data=voc"]),
    "orl_faces": ("orl_faces", ["task=embedding", "data=faces", "data.val_identities=6", "data.test_identities=10"]),
}


class FitClock(L.Callback):
    """Times fit from the end of its first training batch to its end, written to ``out`` as JSON.

    Also splits that time, all in the same run: ``step_s`` inside the training batches (forward,
    loss, logging, backward, optimizer step), ``val_s`` in validation; the rest is waiting for
    data, checkpoints and epoch-end work. Added to a run as an extra callback
    (``+callbacks.fit_clock._target_=train_throughput.FitClock``).
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.start: float | None = None
        self.images, self.step_s, self.val_s = 0, 0.0, 0.0
        self._mark = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        else:
            self.images += len(batch[0])
            self.step_s += now - self._mark

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_mark = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.start is not None:
            self.val_s += time.perf_counter() - self._val_mark

    def on_train_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self.start
        self.out.write_text(
            json.dumps({"images": self.images, "seconds": seconds, "step_s": self.step_s, "val_s": self.val_s})
        )


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mbtasks.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def full_loop(overrides: list[str], run_dir: Path) -> dict:
    """Train-mode timing through the function ``python -m mbtasks`` calls (see :class:`FitClock`);
    in a ``train.time`` run also the run's own split of its budget (``budget_split``)."""
    from mbtasks.modes.run import dispatch

    clock = run_dir.parent / "fit_clock.json"
    overrides = [
        *overrides,
        "+callbacks.fit_clock._target_=train_throughput.FitClock",
        f"+callbacks.fit_clock.out={clock}",
    ]
    dispatch(compose(overrides), run_dir, overrides)
    timing = json.loads(clock.read_text())
    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["callbacks"] if last.is_file() else {}
    budget = next((v for k, v in state.items() if k.startswith("TimeBudget") and v), None)
    if budget:
        split = budget["split"]
        timing["budget_split"] = {
            "spent_s": budget["spent"],
            "steps": split["steps"],
            "validations": split["validations"],
            "step": split["steps_s"] / budget["spent"],
            "val": split["val_s"] / budget["spent"],
        }
        timing["budget_split"]["other"] = 1 - timing["budget_split"]["step"] - timing["budget_split"]["val"]
    return timing


def bare_loss(task, batch) -> torch.Tensor:
    """The training loss as the task computes it, without logging or training metrics."""
    name = type(task).__name__
    if name == "ClassificationTask":
        return task.model_step(batch)[2]
    if name == "DetectionTask":
        return task.model_step(batch)[1]["loss"]
    images, labels = batch
    emb = task.model(images)
    mined = task.miner(emb, labels) if task.miner is not None else None
    return task.metric_loss(emb, labels, mined)


def bare_loop(cfg, batch, steps: int) -> float:
    """img/s of ``steps`` optimizer steps on one pre-loaded batch, the model and optimizer as mode=train builds them."""
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    task = build_task(cfg, datamodule.info)
    task.train()
    if cfg.callbacks.get("channels_last") and cfg.callbacks.channels_last.get("enabled"):
        task.to(memory_format=torch.channels_last)
    optimizer = task.optimizer_factory(split_no_decay(task, task.parameter_groups(), task.no_decay))
    bf16 = "bf16" in str(cfg.trainer.precision)
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(steps + 2):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = bare_loss(task, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= 2:  # the first steps allocate
                times.append(time.perf_counter() - start)
    return len(batch[0]) * len(times) / sum(times)


def first_batch(cfg):
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batch = next(iter(loader))
    return batch


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*", default=["classification", "detection", "embedding"])
    p.add_argument("--real", nargs="*", default=[], choices=list(REAL_SETS), help="shared real sets to run too")
    p.add_argument(
        "--datasets-dir",
        type=Path,
        default=Path(
            os.environ.get("MBTASKS_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets")
        ),
    )
    p.add_argument("--epochs", type=int, default=2, help="full loop: epochs (validation and checkpoint after each)")
    p.add_argument("--steps", type=int, default=None, help="full loop: at most this many batches per epoch")
    p.add_argument("--bare-steps", type=int, default=10, help="bare loop: timed steps (twice: before and after)")
    p.add_argument(
        "--budget",
        default=None,
        help="full loop as a train.time run of this budget (e.g. 5m) "
        "instead of --epochs; adds the run's split of its budget",
    )
    p.add_argument(
        "--no-worker-thread-limit",
        action="store_true",
        help="loader workers keep OpenCV's / BLAS' default thread pools (the measurement before the fix)",
    )
    p.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = p.parse_args()
    setup(args.threads)
    if args.no_worker_thread_limit:
        mbtasks.data.base.limit_worker_threads = mbtasks.data.faces.limit_worker_threads = lambda: None
    if args.quick:
        args.epochs, args.steps, args.bare_steps = 1, args.steps or 5, 3
    runs = {name: [f"task={name}"] for name in args.tasks}
    runs.update(
        {
            name: [f"data.root={args.datasets_dir / folder}", *extra]
            for name, (folder, extra) in REAL_SETS.items()
            if name in args.real
        }
    )
    rows, out = [], {}
    for name, base in runs.items():
        limits = [
            f"trainer.max_epochs={args.epochs}",
            "trainer.limit_test_batches=1",
            "trainer.enable_progress_bar=false",
        ]
        if args.budget:
            limits.append(f"train.time={args.budget}")
        if args.steps:
            limits.append(f"trainer.limit_train_batches={args.steps}")
        overrides = [*base, *limits, *args.overrides]
        cfg = compose(overrides)
        batch = first_batch(cfg)
        bare_before = bare_loop(cfg, batch, args.bare_steps)
        with tempfile.TemporaryDirectory() as tmp:
            timing = full_loop(overrides, Path(tmp) / "run")
        bare_after = bare_loop(cfg, batch, args.bare_steps)
        bare = (bare_before + bare_after) / 2
        images, seconds = timing["images"], timing["seconds"]
        full = images / seconds
        share = {"step": timing["step_s"] / seconds, "val": timing["val_s"] / seconds}
        share["other"] = 1 - share["step"] - share["val"]
        backbone = cfg.backbone._target_.rsplit(".", 1)[-1]
        workers = int(cfg.data.num_workers)
        budget = timing.get("budget_split") or {}
        rows.append(
            [
                name,
                f"{backbone} {cfg.backbone.width} @{cfg.data.image_size}",
                len(batch[0]),
                workers,
                str(cfg.trainer.precision),
                images,
                full,
                bare,
                full / bare,
                share["step"],
                share["val"],
                share["other"],
                *((budget.get("step"), budget.get("val"), budget.get("other")) if args.budget else ()),
            ]
        )
        out[name] = {
            "overrides": overrides,
            "batch_size": len(batch[0]),
            "num_workers": workers,
            "precision": str(cfg.trainer.precision),
            "full_images": images,
            "full_img_s": full,
            "bare_img_s": bare,
            "bare_img_s_before_after": [bare_before, bare_after],
            "ratio": full / bare,
            "time_share": share,
            "budget_split": budget or None,
            "target_ratio": 0.9,
        }
    length = f"train.time={args.budget}" if args.budget else f"{args.epochs} epochs"
    print_table(
        f"Full training loop (mode=train) vs bare step ({args.threads} threads, {length}"
        f"{f' of {args.steps} batches' if args.steps else ''}, worker thread limit "
        f"{'off' if args.no_worker_thread_limit else 'on'})",
        [
            "run",
            "network",
            "batch",
            "workers",
            "precision",
            "images",
            "full img/s",
            "bare img/s",
            "full / bare",
            "in steps",
            "in val",
            "other",
            *(("budget: steps", "budget: val", "budget: other") if args.budget else ()),
        ],
        rows,
    )
    write_results(
        "train_throughput",
        {
            "epochs": args.epochs,
            "budget": args.budget,
            "steps": args.steps,
            "bare_steps": args.bare_steps,
            "worker_thread_limit": not args.no_worker_thread_limit,
            "overrides": args.overrides,
            "runs": out,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
