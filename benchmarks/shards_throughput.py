"""Loader throughput: data=shards (LitData) vs data=imagefolder on the same images, same transforms.

The ImageFolder is written once as shards into a temporary folder (timed), then the training loaders of
both data modules (the composed configs, ``data.image_size``, ``data.batch_size``, ``data.num_workers``
as given) each read whole epochs, interleaved epoch by epoch; images per second is the median over
epochs. Decoding and augmentation are the same code in both, so the difference is how the bytes are
read (one file per image vs a few large chunk files) and how the work is split across workers.

    python benchmarks/shards_throughput.py [--root ../shared/datasets/hymenoptera] [--quick]

Prints a table and writes benchmarks/results/shards_throughput.json. Local disk only (no object store
here), and on a machine shared with other work the numbers are a smoke test, not a measurement.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
from common import REPO, parser, print_table, setup, time_rounds, write_results
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from mbtasks.config import CONFIG_DIR
from mbtasks.data.shards import write_shards


def datamodule(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    return dm


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "hymenoptera")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="data.num_workers of both loaders")
    args = p.parse_args()
    setup(args.threads)
    load_before = os.getloadavg()[0]  # a measurement counts only with nothing else running
    repeats = args.repeats or (2 if args.quick else 5)
    keys = [
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
    ]
    with tempfile.TemporaryDirectory(prefix="shards-") as tmp:
        out = Path(tmp) / args.root.name
        start = time.perf_counter()
        meta = write_shards(args.root, out, workers=args.workers)
        write_s = time.perf_counter() - start
        folder = datamodule(["data=imagefolder", f"data.root={args.root}", *keys])
        shards = datamodule(["data=shards", f"data.root={out}", *keys])
        loaders = {"imagefolder": folder.train_dataloader(), "shards": shards.train_dataloader()}
        counts: dict[str, int] = {}

        def epoch(name):
            def run():
                counts[name] = sum(len(y) for _, y in loaders[name])

            return run

        seconds = time_rounds({k: epoch(k) for k in loaders}, warmup=1, repeats=repeats)
        sizes = {"imagefolder": folder_bytes(args.root / "train"), "shards": folder_bytes(out / "train")}
    rows = [[k, counts[k], seconds[k], counts[k] / seconds[k], sizes[k] / 2**20] for k in loaders]
    ratio = rows[1][3] / rows[0][3]  # images / s: the loaders may drop different remainders
    print_table(
        f"train loader, {args.root.name}: {args.image_size} px, batch {args.batch_size}, "
        f"{args.workers} workers (shards / imagefolder throughput {ratio:.2f}; written in {write_s:.1f} s)",
        ["loader", "images / epoch", "s / epoch", "images / s", "train MiB"],
        rows,
    )
    print(f"1-minute load average before the run: {load_before:.2f} (with other work running: a smoke run)")
    write_results(
        "shards_throughput",
        {
            "root": str(args.root),
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "num_workers": args.workers,
            "repeats": repeats,
            "write_seconds": write_s,
            "load_before": load_before,
            "splits": meta["splits"],
            "loaders": {
                r[0]: {
                    "images_per_epoch": r[1],
                    "seconds_per_epoch": r[2],
                    "images_per_second": r[3],
                    "train_mib": r[4],
                }
                for r in rows
            },
            "ratio_shards_over_imagefolder": ratio,
            "idle": False,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
