"""mbtasks' defaults against hand-written peer loops on the real sets in ../shared/datasets, same wall-clock budget.

For each set, two runs at the same input size and time budget:

- **mbtasks as a user would run it**: ``python -m mbtasks task=... data=... data.root=...
  data.image_size=... train.time=...``, nothing else (no recipe overrides), in a subprocess;
- **a hand-written peer loop** on the same images and splits (read with mbtasks' data
  modules, so both see the same train / val images and the same ground truth):
  classification: timm ``mobilenetv1_100`` (the width of mbtasks' default backbone), AdamW,
  warm-up + cosine, RandomResizedCrop + flip; detection: torchvision
  ``ssdlite320_mobilenet_v3_large(weights=None)`` with its own transform, SGD 0.02 (momentum
  0.9, weight decay 4e-5), warm-up + cosine, flips; faces: timm ``mobilenetv1_100`` with a
  128-d embedding, pytorch-metric-learning triplet loss with semi-hard mining and an
  m-per-class sampler, AdamW, warm-up + cosine.

The peer's schedule follows the clock (progress = elapsed / budget) and it validates once,
at the end, outside the budget; mbtasks validates every epoch inside it. Both are scored
on the validation split with mbtasks' metric code (COCO mAP@0.5 by pycocotools, top-1,
LFW-protocol verification accuracy): mbtasks' number is its last epoch's (not the best
checkpoint's), the peer's its final model's.

    python benchmarks/real_data.py                          # every set, 5 minutes per run
    python benchmarks/real_data.py --budget 20s --sets hymenoptera,raccoon_voc,yalefaces

Prints one table (set, metric, mbtasks, peer, ratio, steps, wall) and writes
benchmarks/results/real_data.json. Runs take the whole machine: run it on an idle one.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import numpy as np
import torch
from common import REPO, RESULTS, machine, print_table, write_results
from torch import nn
from torch.utils.data import DataLoader

from mbtasks.callbacks.epoch_log import read_epoch_log
from mbtasks.callbacks.time_budget import parse_duration

DATASETS = REPO.parent / "shared" / "datasets"

# set: (task, mbtasks data group, input size, metric key, metric name)
SETS: dict[str, tuple[str, str, int, str, str]] = {
    "hymenoptera": ("classification", "imagefolder", 128, "val/acc_top1", "top-1"),
    "natural_images": ("classification", "imagefolder", 64, "val/acc_top1", "top-1"),
    "fruits_voc": ("detection", "voc", 320, "val/map_50", "mAP@0.5"),
    "raccoon_voc": ("detection", "voc", 320, "val/map_50", "mAP@0.5"),
    "orl_faces": ("embedding", "faces", 96, "val/verification_acc", "verif. acc"),
    "yalefaces": ("embedding", "faces", 96, "val/verification_acc", "verif. acc"),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# -- mbtasks, as a user runs it ---------------------------------------------------------------

def mbtasks_args(name: str, budget: str) -> list[str]:
    task, data, size, _, _ = SETS[name]
    return [f"task={task}", f"data={data}", f"data.root={DATASETS / name}", f"data.image_size={size}",
            f"train.time={budget}"]


def run_mbtasks(name: str, budget: str, run_dir: Path, overrides: list[str] = ()) -> dict:
    """``python -m mbtasks`` in a subprocess; the last epoch's validation metric, steps and wall time.

    ``overrides`` (a recipe to compare with the defaults) go after the user's arguments."""
    metric = SETS[name][3]
    args = [sys.executable, "-m", "mbtasks", *mbtasks_args(name, budget), *overrides, f"hydra.run.dir={run_dir}"]
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(run_dir / "stdout.log", "w") as out:
        proc = subprocess.run(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    wall = time.monotonic() - start
    epochs = read_epoch_log(run_dir / "epochs.jsonl")
    if proc.returncode != 0 or not epochs:
        raise RuntimeError(f"mbtasks failed on {name} (exit {proc.returncode}), see {run_dir / 'stdout.log'}")
    last = epochs[-1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"metric": last.get(metric), "steps": int(last["step"]), "epochs": len(epochs), "wall_s": wall,
            "command": "python -m mbtasks " + " ".join(args[3:-1]), "metrics": metrics}


# -- the peer loops -----------------------------------------------------------------------------

def lr_at(progress: float, warmup: float = 0.05, min_ratio: float = 0.01) -> float:
    """Warm-up then cosine, as a fraction of the peak LR, over ``progress`` in [0, 1] of the budget."""
    if progress < warmup:
        return (progress + 1e-3) / warmup
    p = min(1.0, (progress - warmup) / (1 - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def train_for(budget_s: float, loader: DataLoader, optimizer: torch.optim.Optimizer,
              step: Callable[[object], torch.Tensor]) -> int:
    """Run ``step(batch)`` (returns the loss) over epochs of ``loader`` until the budget is spent."""
    peaks = [g["lr"] for g in optimizer.param_groups]
    start, steps = time.monotonic(), 0
    while True:
        for batch in loader:
            progress = (time.monotonic() - start) / budget_s
            if progress >= 1:
                return steps
            for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                group["lr"] = peak * lr_at(progress)
            loss = step(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1


def _instantiate_data(name: str):
    """mbtasks' data module for the set, composed as the CLI would (same splits as the mbtasks run)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from mbtasks.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=mbtasks_args(name, "1m"))
    dm = instantiate(cfg.data)
    dm.setup("fit")
    return dm


def peer_classification(name: str, budget_s: float, workers: int) -> dict:
    import albumentations as A
    import timm
    from torchmetrics.classification import MulticlassAccuracy

    from mbtasks.data.imagefolder import ImageFolderDataset

    size = SETS[name][2]
    dm = _instantiate_data(name)
    k = len(dm.class_names)
    train_tf = A.Compose([A.RandomResizedCrop((size, size), scale=(0.25, 1.0)), A.HorizontalFlip()])
    eval_tf = A.Compose([A.SmallestMaxSize(max_size=int(size / 0.875)), A.CenterCrop(size, size)])
    train = ImageFolderDataset(dm.datasets["train"].samples, train_tf, IMAGENET_MEAN, IMAGENET_STD)
    val = ImageFolderDataset(dm.datasets["val"].samples, eval_tf, IMAGENET_MEAN, IMAGENET_STD)
    model = timm.create_model("mobilenetv1_100", pretrained=False, num_classes=k)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    loader = DataLoader(train, batch_size=64, shuffle=True, drop_last=len(train) > 64, num_workers=workers,
                        persistent_workers=workers > 0)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    steps = train_for(budget_s, loader, optimizer, lambda b: criterion(model(b[0]), b[1]))
    model.eval()
    acc = MulticlassAccuracy(k, average="micro")
    with torch.no_grad():
        for x, y in DataLoader(val, batch_size=128, num_workers=workers):
            acc.update(model(x), y)
    return {"metric": float(acc.compute()), "steps": steps}


def peer_detection(name: str, budget_s: float, workers: int) -> dict:
    import albumentations as A
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from mbtasks.data.detection import DetectionDataset, detection_collate
    from mbtasks.metrics.coco import CocoMeanAP
    from mbtasks.models.detection.postprocess import to_original

    size = 320  # the model's own transform resizes to 320 x 320; resizing first only saves decoding work
    dm = _instantiate_data(name)
    k = len(dm.class_names)
    bbox = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3, clip=True)
    train_tf = A.Compose([A.Resize(size, size), A.HorizontalFlip()], bbox_params=bbox)
    unit = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # [0, 1] images: the model normalises them itself
    train = DetectionDataset(dm.datasets["train"].records, train_tf, size, *unit, train=True)
    loader = DataLoader(train, batch_size=8, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0, collate_fn=detection_collate)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=k + 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=4e-5)

    def step(batch):
        images, targets = batch
        targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]  # 0 is background
        losses = model(list(images), targets)
        return sum(losses.values())

    model.train()
    steps = train_for(budget_s, loader, optimizer, step)
    model.eval()
    result = {"steps": steps}
    for split in ("val", "test"):
        metric = CocoMeanAP()
        ds = DetectionDataset(dm.datasets[split].records, A.Compose([A.Resize(size, size)]), size, *unit, train=False)
        with torch.no_grad():
            for images, targets in DataLoader(ds, batch_size=8, num_workers=workers, collate_fn=detection_collate):
                dets = [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in model(list(images))]
                metric.update(to_original(dets, (size, size), [t["orig_size"] for t in targets]), targets)
        stats = metric.compute()
        result["metric" if split == "val" else "test_map_50"] = stats["map_50"]
        result[f"{split}_map"] = stats["map"]
    return result


def peer_faces(name: str, budget_s: float, workers: int) -> dict:
    import albumentations as A
    import timm
    from pytorch_metric_learning import losses, miners, samplers

    from mbtasks.data.faces import EvalImageDataset, IdentityDataset
    from mbtasks.metrics.verification import evaluate_verification, pair_distances

    size = SETS[name][2]
    dm = _instantiate_data(name)
    train_tf = A.Compose([A.Resize(size, size), A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05),
                                                         rotate=(-10, 10), p=0.7), A.HorizontalFlip()])
    train = IdentityDataset(dm.train_set.samples, train_tf, IMAGENET_MEAN, IMAGENET_STD)
    labels = [label for _, label in dm.train_set.samples]
    batch = min(64, 4 * len(set(labels)))  # the sampler needs m x identities >= batch (Yale: 11 identities)
    sampler = samplers.MPerClassSampler(labels, m=4, batch_size=batch, length_before_new_iter=max(len(labels), batch))
    loader = DataLoader(train, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0)
    model = timm.create_model("mobilenetv1_100", pretrained=False, num_classes=128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = losses.TripletMarginLoss(margin=0.2)
    miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")

    def step(batch):
        x, y = batch
        emb = nn.functional.normalize(model(x), dim=1)
        return loss_fn(emb, y, miner(emb, y))

    model.train()
    steps = train_for(budget_s, loader, optimizer, step)
    model.eval()
    pairs = dm.pair_set("val")
    ds = EvalImageDataset(pairs.images, A.Compose([A.Resize(size, size)]), IMAGENET_MEAN, IMAGENET_STD, size)
    embeddings = torch.zeros(len(pairs.images), 128)
    with torch.no_grad():
        for x, idx, _ in DataLoader(ds, batch_size=128, num_workers=workers):
            embeddings[idx] = nn.functional.normalize(model(x), dim=1)
    res = evaluate_verification(pair_distances(embeddings.numpy(), pairs.pairs), pairs.same, pairs.folds,
                                pairs.num_folds)
    return {"metric": float(res.accuracy), "steps": steps}


PEERS = {"classification": ("timm mobilenetv1_100 + AdamW/cosine", peer_classification),
         "detection": ("torchvision ssdlite320_mobilenet_v3_large + SGD 0.02/cosine", peer_detection),
         "embedding": ("timm mobilenetv1_100 + PML triplet semi-hard, m-per-class", peer_faces)}


def run_peer(name: str, budget_s: float, threads: int, workers: int) -> dict:
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(threads)
    label, fn = PEERS[SETS[name][0]]
    start = time.monotonic()
    out = fn(name, budget_s, workers)
    return {**out, "wall_s": time.monotonic() - start, "peer": label}


def main(argv: Iterable[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="5m", help="wall-clock budget per run, e.g. 5m, 20s (default 5m)")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated sets (default all: {','.join(SETS)})")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the peer loops (mbtasks: torch's default)")
    p.add_argument("--workers", type=int, default=2, help="loader workers of the peer loops (mbtasks' default: 2)")
    p.add_argument("--runs", type=Path, default=RESULTS / "real_data_runs", help="where the mbtasks run dirs go (a dated folder per invocation)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/real_data.json)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="an mbtasks override for every set (a recipe to try against the defaults; repeatable)")
    p.add_argument("--no-peer", action="store_true", help="run mbtasks only (the peer columns stay empty)")
    args = p.parse_args(argv)
    try:
        budget_s = parse_duration(args.budget)
    except ValueError as err:
        p.error(f"--budget: {err}")
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        p.error(f"--sets: unknown {unknown}; expected some of {list(SETS)}")
    runs = args.runs / time.strftime("%Y-%m-%d_%H-%M-%S")  # a fresh run dir per invocation
    rows, results = [], {}
    for name in names:
        print(f"[{name}] mbtasks, {args.budget} ...", flush=True)
        ours = run_mbtasks(name, args.budget, runs / name, args.override)
        if args.no_peer:
            peer = {"metric": None, "steps": "-", "wall_s": float("nan")}
        else:
            print(f"[{name}] peer, {args.budget} ...", flush=True)
            peer = run_peer(name, budget_s, args.threads, args.workers)
        ratio = ours["metric"] / peer["metric"] if ours["metric"] is not None and peer["metric"] else None
        results[name] = {"task": SETS[name][0], "metric": SETS[name][3], "input_size": SETS[name][2],
                         "mbtasks": ours, "peer": peer, "ratio": ratio}
        rows.append([name, SETS[name][4], ours["metric"], peer["metric"], ratio if ratio is not None else "-",
                     f"{ours['steps']} / {peer['steps']}", f"{ours['wall_s']:.0f} / {peer['wall_s']:.0f}"])
        print_table(f"real data, {args.budget} per run (val split; ratio = mbtasks / peer)",
                    ["set", "metric (val)", "mbtasks", "peer", "ratio", "steps (ours / peer)", "wall s (ours / peer)"],
                    rows)
    write_results("real_data", {"budget": args.budget, "budget_s": budget_s, "overrides": args.override, "sets": results,
                                "machine_at_end": machine()}, args.out)


if __name__ == "__main__":
    main()
