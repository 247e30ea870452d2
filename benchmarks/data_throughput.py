"""Is training data-bound? Loader throughput vs training-step throughput, per task, at the defaults.

For each task's default config (data set, image size, batch size, ``data.num_workers``,
backbone) the script measures

- the training loader alone: decode + albumentations + collation in ``num_workers`` processes,
  images per second over a run of batches after the workers have started;
- one training step alone on a real batch from that loader: forward, loss, backward, SGD step
  with ``--threads`` threads;

and reports loader / step (target >= 2: the loader keeps up with training even when the two
share the machine). Synthetic data sets are generated into ``data/`` on first use.

    python benchmarks/data_throughput.py [--quick] [--tasks classification detection embedding]

Prints a table and writes benchmarks/results/data_throughput.json.
"""

from __future__ import annotations

import statistics
import time
import warnings

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import torch
from common import parser, print_table, setup, write_results
from hydra.utils import instantiate

from mbtasks.tasks import build_task


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mbtasks.__main__ import CONFIG_DIR

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
    p.add_argument("overrides", nargs="*", help="extra config overrides (e.g. data.num_workers=1)")
    args = p.parse_args()
    setup(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    batches = 5 if args.quick else 20
    rows, out = [], {}
    for name in args.tasks:
        cfg = compose([f"task={name}", *args.overrides])
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        loader_s, batch, n = loader_throughput(loader, batches)
        task = build_task(cfg, datamodule.info)
        step_s = step_throughput(task, batch, repeats)
        ratio = loader_s / step_s
        backbone = cfg.backbone._target_.rsplit(".", 1)[-1]
        rows.append([name, f"{backbone} {cfg.backbone.width} @{cfg.data.image_size}", n, int(cfg.data.num_workers),
                     loader_s, step_s, ratio])
        out[name] = {"backbone": backbone, "width": cfg.backbone.width, "image_size": int(cfg.data.image_size),
                     "batch_size": n, "num_workers": int(cfg.data.num_workers), "loader_img_s": loader_s,
                     "train_step_img_s": step_s, "ratio": ratio, "target_ratio": 2.0}
        del loader, datamodule
    print_table(f"Loader vs training step at the default configs ({args.threads} threads, steps: median of {repeats})",
                ["task", "network", "batch", "workers", "loader img/s", "step img/s", "loader / step"], rows)
    write_results("data_throughput", {"quick": args.quick, "repeats": repeats, "loader_batches": batches,
                                      "overrides": args.overrides, "tasks": out}, args.out)


if __name__ == "__main__":
    main()
