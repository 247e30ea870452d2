"""Verification and open-set identification on real faces (ORL, Yale) against a raw-pixel cosine
baseline, in one run.

For each data set (identity folders of grey face photos) the script trains the embedding
task on some identities through the real CLI code path, evaluates it on held-out
identities with the LFW protocol, and scores the same test pairs with the cosine
distance of raw (mean-removed) pixels. Optionally it also scores a given embedding
checkpoint zero-shot (e.g. one trained on the synthetic faces) on the same pairs, and
that checkpoint's backbone fine-tuned on the real training identities.

Open set (1:N, ``mbtasks/metrics/open_set.py``): the test identities are split into a gallery
(2 images enrolled per identity, the rest are queries) and strangers, 10 random splits pooled;
``DIR@FAR 0.1`` is the rate of known queries accepted with their own identity while 10% of the
strangers' queries are given a gallery identity, and ``FAR@stored`` the strangers let through at
the threshold the checkpoint stores (chosen on the validation identities for FAR 0.01), which
predict and Pipeline apply.

    python benchmarks/faces_real.py                     # ORL and Yale, default settings
    python benchmarks/faces_real.py --epochs 30 --ckpt outputs/embedding/.../best.ckpt

Prints a table and writes benchmarks/results/faces_real.json. The data sets are small
(40 and 15 identities), so the numbers carry a few points of noise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mbtasks.config import CONFIG_DIR  # noqa: E402
from mbtasks.data.faces import FacesDataModule  # noqa: E402
from mbtasks.data.image_files import read_rgb  # noqa: E402
from mbtasks.metrics.open_set import evaluate_open_set  # noqa: E402
from mbtasks.metrics.verification import evaluate_verification, pair_distances  # noqa: E402
from mbtasks.modes.run import dispatch  # noqa: E402

DATASETS = {
    # name: (folder, held-out validation identities, test identities)
    "orl": ("orl_faces", 6, 10),
    "yale": ("yalefaces", 3, 4),
}


def data_overrides(root: Path, val: int, test: int, image_size: int) -> list[str]:
    return [
        "data=faces",
        f"data.root={root}",
        f"data.image_size={image_size}",
        f"data.val_identities={val}",
        f"data.test_identities={test}",
        "data.identities_per_batch=8",
        "data.images_per_identity=4",
        "data.pairs_per_fold=100",
        "data.num_workers=0",
    ]


def pixel_baseline(datamodule: FacesDataModule, size: int) -> dict:
    """Cosine distance of mean-removed raw pixels (resized to ``size``) on the test pairs."""
    from PIL import Image

    ps = datamodule.pair_set("test")
    rows = []
    for path in ps.images:
        img = Image.fromarray(read_rgb(path)).convert("L").resize((size, size), Image.BILINEAR)
        v = np.asarray(img, np.float64).ravel()
        v -= v.mean()
        rows.append(v / (np.linalg.norm(v) + 1e-12))
    res = evaluate_verification(pair_distances(np.stack(rows), ps.pairs), ps.same, ps.folds, ps.num_folds)
    # the task's defaults (conf/task/embedding.yaml), on the test identities
    open_set = evaluate_open_set(np.stack(rows), np.asarray(ps.labels), fars=(0.01, 0.1))
    return {
        "verification_acc": res.accuracy,
        "verification_acc_std": res.accuracy_std,
        "roc_auc": res.roc_auc,
        "dir_at_far_0.01": open_set.dir_at_far[0.01],
        "dir_at_far_0.1": open_set.dir_at_far[0.1],
        "rank1": open_set.rank1,
        "open_set_far_at_stored": None,
    }


def metrics_row(metrics: dict) -> dict:
    """The table's numbers from a run's ``test/*`` metrics."""
    return {
        "verification_acc": metrics["test/verification_acc"],
        "verification_acc_std": metrics["test/verification_acc_std"],
        "roc_auc": metrics["test/roc_auc"],
        "dir_at_far_0.01": metrics.get("test/dir_at_far_0.01"),
        "dir_at_far_0.1": metrics.get("test/dir_at_far_0.1"),
        "rank1": metrics.get("test/identification_rank1"),
        "open_set_far_at_stored": metrics.get("test/open_set_far"),
    }


def fmt(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def run_cli(overrides: list[str], run_dir: Path) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return dispatch(cfg, run_dir, overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--datasets-dir", default=os.environ.get("MBTASKS_FACES_DIR", str(REPO.parent / "shared" / "datasets"))
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--val-identities",
        type=int,
        default=None,
        help="held-out validation identities (default: per data set); they choose the 1:N threshold",
    )
    parser.add_argument("--ckpt", default=None, help="also score this embedding checkpoint zero-shot and fine-tuned")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "faces_real.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            folder, val, test = DATASETS[name]
            val = args.val_identities or val
            root = Path(args.datasets_dir) / folder
            if not root.is_dir():
                print(f"skipping {name}: {root} not found")
                continue
            data = data_overrides(root, val, test, args.image_size)
            dm = FacesDataModule(
                str(root),
                image_size=args.image_size,
                val_identities=val,
                test_identities=test,
                pairs_per_fold=100,
                num_workers=0,
            )
            dm.setup()
            ps = dm.pair_set("test")
            common = {
                "dataset": name,
                "val_identities": val,
                "test_identities": len(ps.identities),
                "test_pairs": len(ps),
            }
            results.append(
                {**common, "method": "raw-pixel cosine", **pixel_baseline(dm, args.image_size), "seconds": 0.0}
            )
            start = time.perf_counter()
            train_over = [
                "task=embedding",
                f"backbone.width={args.width}",
                f"trainer.max_epochs={args.epochs}",
                "trainer.enable_progress_bar=false",
                *data,
            ]
            metrics = run_cli(train_over, Path(tmp) / name)
            results.append(
                {
                    **common,
                    "method": f"mbtasks triplet, trained on {name} ({args.epochs} ep)",
                    **metrics_row(metrics),
                    "seconds": time.perf_counter() - start,
                }
            )
            if args.ckpt:
                start = time.perf_counter()
                metrics = run_cli([*train_over, "mode=test", f"ckpt_path={args.ckpt}"], Path(tmp) / f"{name}_ckpt")
                results.append(
                    {
                        **common,
                        "method": f"checkpoint zero-shot ({Path(args.ckpt).name})",
                        **metrics_row(metrics),
                        "seconds": time.perf_counter() - start,
                    }
                )
                start = time.perf_counter()
                metrics = run_cli(
                    [*train_over, f"backbone.pretrained={args.ckpt}", "finetune.lr_mult=0.1"],
                    Path(tmp) / f"{name}_finetune",
                )
                results.append(
                    {
                        **common,
                        "method": f"checkpoint fine-tuned on {name} ({args.epochs} ep)",
                        **metrics_row(metrics),
                        "seconds": time.perf_counter() - start,
                    }
                )
    table = Table(title="faces on held-out identities: verification (LFW protocol, 10 folds) and open set (1:N)")
    for col in (
        "dataset",
        "method",
        "val ids",
        "test ids",
        "pairs",
        "accuracy",
        "ROC AUC",
        "rank-1",
        "DIR@FAR 0.1",
        "DIR@FAR 0.01",
        "FAR@stored",
        "seconds",
    ):
        table.add_column(col)
    for r in results:
        table.add_row(
            r["dataset"],
            r["method"],
            str(r["val_identities"]),
            str(r["test_identities"]),
            str(r["test_pairs"]),
            f"{r['verification_acc']:.3f} +- {r['verification_acc_std']:.3f}",
            f"{r['roc_auc']:.3f}",
            fmt(r["rank1"]),
            fmt(r["dir_at_far_0.1"]),
            fmt(r["dir_at_far_0.01"]),
            fmt(r["open_set_far_at_stored"]),
            f"{r['seconds']:.0f}",
        )
    Console(width=150).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"args": vars(args), "torch_threads": torch.get_num_threads(), "results": results}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
