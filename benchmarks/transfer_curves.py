"""Does a classification backbone help detection? First-epoch detection loss, scratch vs transferred.

1. Train classification on the synthetic shapes (the default ``python -m mbtasks`` data set).
2. Train detection on the synthetic shape scenes for one epoch three times, the same seed and
   batches: from scratch, from the classification checkpoint with the backbone frozen (the
   ``experiment=transfer_cls_to_det`` recipe), and from it fine-tuning everything.
3. Record ``train/loss`` at every step (from the runs' TensorBoard logs) and the epoch's mean.

    python benchmarks/transfer_curves.py [--quick] [--width 0.5] [--cls-epochs 3] [--det-batches 20]

Prints a table and writes benchmarks/results/transfer_curves.json (the curves included).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
from common import parser, print_table, setup, write_results
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from mbtasks.config import CONFIG_DIR
from mbtasks.modes.run import dispatch


def run(overrides: list[str], run_dir: Path) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return dispatch(cfg, run_dir, overrides)


def loss_curve(run_dir: Path, tag: str = "train/loss") -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = {}
    for f in sorted((run_dir / "tensorboard").glob("events.out.tfevents*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points.update({e.step: e.value for e in acc.Scalars(tag)})
    return [points[k] for k in sorted(points)]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--cls-epochs", type=int, default=None, help="classification epochs (default 8, --quick 1)")
    p.add_argument(
        "--det-batches", type=int, default=None, help="detection batches in the epoch (default 20, --quick 4)"
    )
    args = p.parse_args()
    cls_epochs = args.cls_epochs or (1 if args.quick else 8)
    det_batches = args.det_batches or (4 if args.quick else 20)
    shared = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", f"backbone.width={args.width}"]
    setup(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cls_extra = (
            ["trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
            if args.quick
            else []
        )
        cls = run([*shared, f"trainer.max_epochs={cls_epochs}", "task.log_images=0", *cls_extra], tmp / "cls")
        source = tmp / "cls" / "checkpoints" / "last.ckpt"
        det = [
            "task=detection",
            *shared,
            "trainer.max_epochs=1",
            f"trainer.limit_train_batches={det_batches}",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            "task.log_images=0",
            "seed=0",
        ]
        variants = {
            "scratch": [],
            "transferred, frozen backbone": ["experiment=transfer_cls_to_det", f"backbone.pretrained={source}"],
            "transferred, fine-tuned": [f"backbone.pretrained={source}"],
        }
        curves, rows = {}, []
        for name, extra in variants.items():
            run_dir = tmp / name.replace(" ", "_").replace(",", "")
            metrics = run([*det, *extra], run_dir)
            curve = loss_curve(run_dir)
            curves[name] = {
                "train_loss": curve,
                "epoch_mean": statistics.fmean(curve),
                "last_5_mean": statistics.fmean(curve[-5:]),
                "val_loss": metrics.get("val/loss"),
                "val_map_50": metrics.get("val/map_50"),
            }
            rows.append(
                [
                    name,
                    curve[0],
                    statistics.fmean(curve),
                    statistics.fmean(curve[-5:]),
                    metrics.get("val/loss") or float("nan"),
                ]
            )
    scratch = curves["scratch"]["epoch_mean"]
    for name in variants:
        curves[name]["epoch_mean_vs_scratch"] = curves[name]["epoch_mean"] / scratch
    print_table(
        f"Detection, first epoch ({det_batches} batches), V1 width {args.width}; backbone from "
        f"{cls_epochs} classification epochs (test/acc_top1 {cls.get('test/acc_top1', float('nan')):.3f})",
        ["start", "first-step loss", "epoch mean loss", "last-5 mean loss", "val loss"],
        rows,
    )
    write_results(
        "transfer_curves",
        {
            "quick": args.quick,
            "width": args.width,
            "cls_epochs": cls_epochs,
            "det_batches": det_batches,
            "classification": cls,
            "detection": curves,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
