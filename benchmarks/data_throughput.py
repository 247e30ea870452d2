"""Is training data-bound? Loader throughput vs training-step throughput, per task, at the defaults.

For each task's default config (data set, image size, batch size, ``data.num_workers``,
backbone), and with ``--real`` for the shared real sets at their task's default data config,
the script measures

- decoding alone (one process, the training split's first ``--decode-images`` files): full-size
  vs reduced-size JPEG decoding at the side the training transforms need, and at the side the
  evaluation transforms need;
- the training loader alone: decode + albumentations + collation in ``num_workers`` processes,
  images per second over a run of batches after the workers have started, with reduced-size
  decoding on and off (interleaved, ``--decode`` picks one);
- one training step alone on a real batch from that loader: forward, loss, backward, SGD step
  with ``--threads`` threads;

and reports loader / step (target >= 2: the loader keeps up with training even when the two
share the machine). Synthetic data sets are generated into ``data/`` on first use.

    python benchmarks/data_throughput.py [--quick] [--tasks classification detection embedding]
    python benchmarks/data_throughput.py --real [--sets fruits_voc hymenoptera] [--decode full]

Prints a table and writes benchmarks/results/data_throughput.json (``--real``: data_throughput_real.json).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import torch
from common import parser, print_table, setup, time_rounds, write_results
from hydra.utils import instantiate

from mbtasks.data.image_files import read_rgb_sized
from mbtasks.data.transforms import decode_side
from mbtasks.tasks import build_task

# Shared real sets: folder and the overrides that make them a default run of their task.
REAL_SETS = {
    "hymenoptera": ("hymenoptera", ["task=classification", "data=imagefolder"]),
    "natural_images": ("natural_images", ["task=classification", "data=imagefolder"]),
    "fruits_voc": ("fruits_voc", ["task=detection", "data=voc"]),
    "raccoon_voc": ("raccoon_voc", ["task=detection", "data=voc"]),
    "orl_faces": ("orl_faces", ["task=embedding", "data=faces", "data.val_identities=6", "data.test_identities=10"]),
    "yalefaces": (
        "yalefaces",
        [
            "task=embedding",
            "data=faces",
            "data.val_identities=3",
            "data.test_identities=4",
            "data.identities_per_batch=8",
        ],
    ),
}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mbtasks.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def loader_throughput(loader, batches: int) -> tuple[float, object, int]:
    """Images per second over ``batches`` batches after the first (worker start-up excluded)."""
    it = iter(loader)
    first = next(it)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        images += len(batch[0])
    return images / (time.perf_counter() - start), first, len(first[0])


def train_split(datamodule):
    """The training dataset and its image files, whatever the data module's kind."""
    ds = datamodule.datasets["train"] if hasattr(datamodule, "datasets") else datamodule.train_set
    if hasattr(ds, "records"):
        return ds, [r.path for r in ds.records]
    return ds, [path for path, _ in ds.samples]


def decode_throughput(files: list[Path], sides: dict[str, int], rounds: int) -> dict[str, float]:
    """Images per second of :func:`read_rgb_sized` over ``files`` in this process, per ``min_side``;
    the sides interleaved round by round (median of ``rounds``, after one warm-up that fills the page cache)."""

    def decode(side: int):
        return lambda: [read_rgb_sized(path, side) for path in files]

    seconds = time_rounds({name: decode(side) for name, side in sides.items()}, warmup=1, repeats=rounds)
    return {name: len(files) / t for name, t in seconds.items()}


def measure_loaders(cfg, modes: list[str], batches: int, rounds: int) -> tuple[dict[str, float], object]:
    """Loader img/s per decode mode (``reduced`` / ``full``), modes interleaved over ``rounds``."""
    results: dict[str, list[float]] = {m: [] for m in modes}
    batch = None
    for _ in range(rounds):
        for mode in modes:
            datamodule = instantiate(cfg.data)
            datamodule.reduced_decode = mode == "reduced"
            datamodule.setup("fit")
            loader = datamodule.train_dataloader()
            img_s, first, _ = loader_throughput(loader, batches)
            results[mode].append(img_s)
            batch = batch if batch is not None else first
            del loader, datamodule
    return {m: statistics.median(v) for m, v in results.items()}, batch


def step_throughput(task, batch, repeats: int) -> float:
    """Images per second of forward + loss + backward + SGD step on one real batch."""
    task.train()
    optimizer = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        for i in range(repeats + 1):
            start = time.perf_counter()
            loss = task.training_step(batch, i)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i:  # the first step allocates
                times.append(time.perf_counter() - start)
    return len(batch[0]) / statistics.median(times)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["classification", "detection", "embedding"])
    p.add_argument("--real", action="store_true", help="the shared real sets instead of the synthetic defaults")
    p.add_argument("--sets", nargs="+", default=list(REAL_SETS), choices=list(REAL_SETS), help="with --real")
    p.add_argument(
        "--datasets-dir",
        type=Path,
        default=Path(
            os.environ.get("MBTASKS_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets")
        ),
    )
    p.add_argument(
        "--decode",
        choices=["both", "reduced", "full"],
        default="both",
        help="loader with reduced-size JPEG decoding, full-size decoding, or both (interleaved)",
    )
    p.add_argument("--decode-images", type=int, default=60, help="files timed in the decode-only measurement")
    p.add_argument("--decode-only", action="store_true", help="only the decode measurement (no loader, no step)")
    p.add_argument("overrides", nargs="*", help="extra config overrides (e.g. data.num_workers=1)")
    args = p.parse_args()
    setup(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    batches = 5 if args.quick else 20
    rounds = 1 if args.quick else 2
    modes = ["reduced", "full"] if args.decode == "both" else [args.decode]
    runs = (
        {
            name: [f"data.root={args.datasets_dir / folder}", *extra]
            for name, (folder, extra) in REAL_SETS.items()
            if name in args.sets
        }
        if args.real
        else {name: [f"task={name}"] for name in args.tasks}
    )
    rows, out = [], {}
    for name, base in runs.items():
        cfg = compose([*base, *args.overrides])
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        ds, files = train_split(datamodule)
        side, eval_side = decode_side(datamodule.train_transforms), decode_side(datamodule.eval_transforms)
        files = files[: args.decode_images]
        decode = decode_throughput(
            files, {"full": 0, "reduced": side, "reduced_eval": eval_side}, 3 if args.quick else 7
        )
        del datamodule, ds
        if args.decode_only:
            rows.append(
                [
                    name,
                    f"{side} / {eval_side}",
                    decode["full"],
                    decode["reduced"],
                    decode["reduced"] / decode["full"],
                    decode["reduced_eval"] / decode["full"],
                ]
            )
            out[name] = {
                "overrides": base,
                "decode_side": side,
                "eval_decode_side": eval_side,
                "decode_images": len(files),
                "decode_img_s": decode,
            }
            continue
        loader, batch = measure_loaders(cfg, modes, batches, rounds)
        task = build_task(cfg, instantiate(cfg.data).info)
        step_s = step_throughput(task, batch, repeats)
        best = loader.get("reduced", loader.get("full"))
        backbone = cfg.backbone._target_.rsplit(".", 1)[-1]
        n, workers = len(batch[0]), int(cfg.data.num_workers)
        rows.append(
            [
                name,
                f"{backbone} {cfg.backbone.width} @{cfg.data.image_size}",
                n,
                workers,
                f"{side} / {eval_side}",
                decode["full"],
                decode["reduced"],
                decode["reduced"] / decode["full"],
                decode["reduced_eval"] / decode["full"],
                loader.get("full", float("nan")),
                loader.get("reduced", float("nan")),
                loader["reduced"] / loader["full"] if len(loader) == 2 else float("nan"),
                step_s,
                best / step_s,
            ]
        )
        out[name] = {
            "overrides": base,
            "backbone": backbone,
            "width": cfg.backbone.width,
            "image_size": int(cfg.data.image_size),
            "batch_size": n,
            "num_workers": workers,
            "decode_side": side,
            "eval_decode_side": eval_side,
            "decode_images": len(files),
            "decode_img_s": decode,
            "decode_speedup": decode["reduced"] / decode["full"],
            "eval_decode_speedup": decode["reduced_eval"] / decode["full"],
            "loader_img_s": loader,
            "loader_speedup": loader["reduced"] / loader["full"] if len(loader) == 2 else None,
            "train_step_img_s": step_s,
            "ratio": best / step_s,
            "target_ratio": 2.0,
        }
    what = "shared real sets" if args.real else "default configs"
    if args.decode_only:
        print_table(
            f"JPEG decoding alone, one process ({'median of 3' if args.quick else 'median of 7'}, interleaved)",
            ["set", "decode side train / eval", "full img/s", "train-side img/s", "x train", "x eval"],
            rows,
        )
        write_results("data_decode", {"quick": args.quick, "tasks": out}, args.out)
        return
    print_table(
        f"Decode, loader and training step on the {what} ({args.threads} threads, "
        f"steps: median of {repeats}; loader: median of {rounds}, {batches} batches)",
        [
            "set",
            "network",
            "batch",
            "workers",
            "decode side train / eval",
            "decode full img/s",
            "decode train-side img/s",
            "decode x train",
            "decode x eval",
            "loader full img/s",
            "loader reduced img/s",
            "loader x",
            "step img/s",
            "loader / step",
        ],
        rows,
    )
    write_results(
        "data_throughput_real" if args.real else "data_throughput",
        {
            "quick": args.quick,
            "repeats": repeats,
            "loader_batches": batches,
            "loader_rounds": rounds,
            "decode": args.decode,
            "overrides": args.overrides,
            "tasks": out,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
