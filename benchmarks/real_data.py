"""mbtasks' defaults against hand-written peer loops on the real sets in ../shared/datasets, same wall-clock budget.

Each set runs from two starts (``--start scratch|pretrained|both``, default both), each against a
peer at the same input size and time budget:

- **mbtasks as a user would run it**: ``python -m mbtasks task=... data=... data.root=...
  data.image_size=... train.time=...`` in a subprocess, no recipe overrides:

  - *scratch*: ``backbone.pretrained=null`` given explicitly (the default ``auto`` would fine-tune
    ImageNet weights on real data when they are on the machine);
  - *pretrained*: with the ImageNet weights on the machine, so ``backbone.pretrained=auto`` (the
    default, not given) fine-tunes them with the task's ``finetune_recipe``. The benchmark makes
    them findable without touching the user's home: ``TORCH_HOME=<tmp>/torch`` (torchvision's V2 file
    linked into ``hub/checkpoints``), ``MBTASKS_WEIGHTS_DIR=<tmp>/weights`` (filled by ``python -m
    mbtasks weights convert`` from ``--weights``, default ../shared/weights), ``HF_HOME=<tmp>/hf`` (a
    timm file in the user's Hugging Face cache cannot stand in). A run whose log does not say it
    fine-tuned from them is an error. Classification uses ``backbone=mobilenet_v2`` (the peer
    fine-tunes the same torchvision file); detection and faces the task's default backbone when its
    ImageNet weights exist (V1 1.0, from the TF-slim graph), else ``backbone=mobilenet_v2``;
    the table's ``model`` column says which;

- **a hand-written peer loop** on the same images and splits (read with mbtasks' data
  modules, so both see the same train / val images and the same ground truth):

  - scratch: classification: timm ``mobilenetv1_100`` (the width of mbtasks' default backbone),
    AdamW, warm-up + cosine, RandomResizedCrop + flip; detection: torchvision
    ``ssdlite320_mobilenet_v3_large(weights=None)`` with its own transform, SGD 0.02 (momentum
    0.9, weight decay 4e-5), warm-up + cosine, flips; faces: timm ``mobilenetv1_100`` with a
    128-d embedding, pytorch-metric-learning triplet loss with semi-hard mining and an
    m-per-class sampler, AdamW, warm-up + cosine;
  - pretrained: classification: torchvision ``mobilenet_v2`` loaded with the same ImageNet file,
    trained as the PyTorch transfer-learning tutorial does: a new ``classifier[1] =
    nn.Linear(1280, K)``, all layers trained, SGD lr 1e-3 momentum 0.9, batch 4, StepLR(7 of 25
    epochs, gamma 0.1) as the same fraction of the budget (x0.1 at 28 %, 56 %, 84 %),
    RandomResizedCrop(size) + horizontal flip, ImageNet normalisation; detection and faces: the
    scratch peers above (no pretrained peer of the same backbone), and the ``vs ours scratch``
    column: our pretrained row over our scratch row.

The peer's schedule follows the clock (progress = elapsed / budget) and it validates once,
at the end, outside the budget; mbtasks validates every epoch inside it. Both are scored
on the validation split with mbtasks' metric code (COCO mAP@0.5 by pycocotools, top-1,
LFW-protocol verification accuracy): mbtasks' number is its last epoch's (not the best
checkpoint's), the peer's its final model's. Classification rows show the val split's
majority-class rate (always answering the most frequent class scores that much); detection rows
show mbtasks' held-out TEST split mAP@0.5 (``metrics.json`` ``test/map_50`` of the checkpoint
mbtasks tests, only when ``test/split`` is ``test``), reported, never used to choose anything.

Input sizes (``--size SET=PX`` for every start of a set, ``--size SET:START=PX`` for one):
scratch as before (hymenoptera 128, natural_images 64, detection 320, faces 96); pretrained
classification larger, where ImageNet features pay for the pixels: hymenoptera 160 (photos of
130-2592 px; a resolution of the V1/V2 papers, ~half the multiply-adds of 224, so about twice the
fine-tuning steps in a CPU budget for a few points of ImageNet accuracy), natural_images 96 (30 px
thumbnails: at 64 the stride-32 map is 2 x 2 and objects are far smaller than the ImageNet objects
the filters learnt; 96 gives a 3 x 3 map at 2.25x the cost of 64, 128 would be 4x for no new pixels).

    python benchmarks/real_data.py                          # every set, both starts, 5 minutes per run
    python benchmarks/real_data.py --budget 20s --sets hymenoptera,raccoon_voc,yalefaces
    python benchmarks/real_data.py --start pretrained --sets hymenoptera --size hymenoptera=224

Prints one table (set, metric, start, model, mbtasks, peer, ratio, vs ours scratch, majority,
test mAP, steps, wall) and writes benchmarks/results/real_data.json. Runs take the whole machine:
run it on an idle one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import common  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch loads
import numpy as np
import torch
from common import REPO, RESULTS, machine, print_table, write_results
from imagenet_weights import sources as weight_sources
from torch import nn
from torch.utils.data import DataLoader

from mbtasks.callbacks.epoch_log import read_epoch_log
from mbtasks.callbacks.time_budget import parse_duration

DATASETS = REPO.parent / "shared" / "datasets"
WEIGHTS = REPO.parent / "shared" / "weights"

# set: (task, mbtasks data group, input size (from scratch), metric key, metric name)
SETS: dict[str, tuple[str, str, int, str, str]] = {
    "hymenoptera": ("classification", "imagefolder", 128, "val/acc_top1", "top-1"),
    "natural_images": ("classification", "imagefolder", 64, "val/acc_top1", "top-1"),
    "fruits_voc": ("detection", "voc", 320, "val/map_50", "mAP@0.5"),
    "raccoon_voc": ("detection", "voc", 320, "val/map_50", "mAP@0.5"),
    "orl_faces": ("embedding", "faces", 96, "val/verification_acc", "verif. acc"),
    "yalefaces": ("embedding", "faces", 96, "val/verification_acc", "verif. acc"),
}
STARTS = ("scratch", "pretrained")
# the pretrained rows' input size where it differs from the scratch one (why: the module docstring)
PRETRAINED_SIZES = {"hymenoptera": 160, "natural_images": 96}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# the torchvision file the pretrained classification rows (ours: backbone=mobilenet_v2) and their peer start from
TV_V2 = "mobilenet_v2_1.0"


def default_size(name: str, start: str) -> int:
    return PRETRAINED_SIZES.get(name, SETS[name][2]) if start == "pretrained" else SETS[name][2]


# -- the ImageNet weights, where a user's machine would have them -----------------------------------


class WeightsCache:
    """``TORCH_HOME`` / ``MBTASKS_WEIGHTS_DIR`` / ``HF_HOME`` under ``root``, filled on demand from the
    original files in ``weights`` (torchvision's .pth linked, Google's .pb / .tflite converted with
    ``python -m mbtasks weights convert``); :meth:`env` is the environment of the pretrained runs."""

    def __init__(self, root: Path, weights: Path) -> None:
        self.root, self.files = root, weight_sources(weights)
        self.done: dict[str, bool] = {}

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TORCH_HOME": str(self.root / "torch"),
            "MBTASKS_WEIGHTS_DIR": str(self.root / "weights"),
            "HF_HOME": str(self.root / "hf"),
            "HF_HUB_OFFLINE": "1",
        }

    def ensure(self, name: str) -> bool:
        """Whether published ``name`` (``mobilenet_v1_1.0``...) is in the cache, putting it there if its
        original file exists."""
        if name not in self.done:
            self.done[name] = self._place(name)
        return self.done[name]

    def _place(self, name: str) -> bool:
        if name not in self.files:
            return False
        path, runtime = self.files[name]
        if runtime == "torchvision":
            ckpt = self.root / "torch" / "hub" / "checkpoints"
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / path.name).unlink(missing_ok=True)
            (ckpt / path.name).symlink_to(path)
            print(f"  {name}: {path} linked into {ckpt}", flush=True)
            return True
        print(f"  {name}: python -m mbtasks weights convert {path}", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "mbtasks", "weights", "convert", str(path)],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"  conversion failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", flush=True)
            return False
        return True


def compose_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mbtasks.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def pretrained_backbone(name: str, cache: WeightsCache) -> tuple[list[str], str]:
    """(mbtasks overrides, description) of the pretrained row's backbone: ``backbone=mobilenet_v2`` for
    classification; the task's default backbone for detection / faces when its ImageNet weights exist,
    else ``backbone=mobilenet_v2``. Puts the weights in the cache."""
    from mbtasks.backbones.weights import published
    from mbtasks.errors import ConfigError
    from mbtasks.pretraining import GROUPS, backbone_arch

    task = SETS[name][0]
    if task != "classification":
        arch, width = backbone_arch(
            compose_cfg([f"task={task}", f"data={SETS[name][1]}", f"data.root={DATASETS / name}"])
        )
        try:
            entry = published.entry_for(arch, width)
        except ConfigError:
            entry = None
        if entry is not None and cache.ensure(entry.name):
            return [], f"{GROUPS[arch]} {width:g} (task default), {entry.name}:imagenet"
        why = f"no ImageNet weights for the default {arch}({width:g}) here"
    else:
        why = "the peer fine-tunes the same torchvision file"
    if not cache.ensure(TV_V2):
        raise RuntimeError(f"no {TV_V2} ImageNet weights in --weights for the pretrained rows")
    return ["backbone=mobilenet_v2"], f"mobilenet_v2 1.0, {TV_V2}:imagenet ({why})"


# -- mbtasks, as a user runs it ---------------------------------------------------------------


def mbtasks_args(name: str, budget: str, size: int | None = None) -> list[str]:
    task, data, default, _, _ = SETS[name]
    return [
        f"task={task}",
        f"data={data}",
        f"data.root={DATASETS / name}",
        f"data.image_size={size or default}",
        f"train.time={budget}",
    ]


FINETUNED = re.compile(r"backbone\.pretrained=auto: real data and (\S+) ImageNet weights on this machine \((.*?)\)")
RECIPE = re.compile(r"fine-tuning recipe of task=\w+: (.*?) \(keys given")


def run_mbtasks(
    name: str,
    budget: str,
    run_dir: Path,
    overrides: list[str] = (),
    size: int | None = None,
    start: str = "scratch",
    env: dict[str, str] | None = None,
) -> dict:
    """``python -m mbtasks`` in a subprocess; the last epoch's validation metric, steps and wall time.

    ``overrides`` (the start's backbone keys, then a recipe to compare with the defaults) go after the
    user's arguments. ``start``: ``scratch`` gives ``backbone.pretrained=null``; ``pretrained`` gives
    nothing (``auto``) and checks in the log that the run fine-tuned the ImageNet weights."""
    metric = SETS[name][3]
    start_args = ["backbone.pretrained=null"] if start == "scratch" else []
    args = [
        sys.executable,
        "-m",
        "mbtasks",
        *mbtasks_args(name, budget, size),
        *start_args,
        *overrides,
        f"hydra.run.dir={run_dir}",
    ]
    run_dir.mkdir(parents=True, exist_ok=True)
    start_t = time.monotonic()
    with open(run_dir / "stdout.log", "w") as out:
        proc = subprocess.run(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.monotonic() - start_t
    epochs = read_epoch_log(run_dir / "epochs.jsonl")
    if proc.returncode != 0 or not epochs:
        raise RuntimeError(f"mbtasks failed on {name} (exit {proc.returncode}), see {run_dir / 'stdout.log'}")
    last = epochs[-1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = {
        "metric": last.get(metric),
        "steps": int(last["step"]),
        "epochs": len(epochs),
        "wall_s": wall,
        "command": "python -m mbtasks " + " ".join(args[3:-1]),
        "metrics": metrics,
    }
    if metrics.get("test/split") == "test" and "test/map_50" in metrics:
        result["test_map_50"] = metrics["test/map_50"]
    result["backbone"] = backbone_of(run_dir)
    if start == "pretrained":
        log = (run_dir / "stdout.log").read_text(errors="replace")
        found = FINETUNED.search(log)
        if found is None:
            raise RuntimeError(
                f"{name}: the pretrained run did not fine-tune ImageNet weights "
                f"(backbone.pretrained=auto did not find them), see {run_dir / 'stdout.log'}"
            )
        recipe = RECIPE.search(log)
        result.update(
            {
                "weights": found.group(1),
                "weights_file": found.group(2),
                "finetune_recipe": recipe.group(1) if recipe else None,
            }
        )
    return result


def backbone_of(run_dir: Path) -> str | None:
    """``V1 1.0``: the backbone (MobileNet V1 / V2) and width of the run's saved config."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    target = str(OmegaConf.select(cfg, "backbone._target_", default="?")).rsplit(".", 1)[-1]
    short = {"MobileNetV1": "V1", "MobileNetV2": "V2"}.get(target, target)
    return f"{short} {float(OmegaConf.select(cfg, 'backbone.width', default=1.0) or 1.0)}"


# -- the peer loops -----------------------------------------------------------------------------


def lr_at(progress: float, warmup: float = 0.05, min_ratio: float = 0.01) -> float:
    """Warm-up then cosine, as a fraction of the peak LR, over ``progress`` in [0, 1] of the budget."""
    if progress < warmup:
        return (progress + 1e-3) / warmup
    p = min(1.0, (progress - warmup) / (1 - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def tutorial_step_lr(progress: float) -> float:
    """The transfer-learning tutorial's StepLR(step_size=7, gamma=0.1) over its 25 epochs, as fractions of
    the budget: x0.1 at 7/25, 14/25 and 21/25."""
    return 0.1 ** int(progress / (7 / 25))


def train_for(
    budget_s: float,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    step: Callable[[object], torch.Tensor],
    schedule: Callable[[float], float] = lr_at,
) -> int:
    """Run ``step(batch)`` (returns the loss) over epochs of ``loader`` until the budget is spent; the LR
    is the peak times ``schedule(progress)``."""
    peaks = [g["lr"] for g in optimizer.param_groups]
    start, steps = time.monotonic(), 0
    while True:
        for batch in loader:
            progress = (time.monotonic() - start) / budget_s
            if progress >= 1:
                return steps
            for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                group["lr"] = peak * schedule(progress)
            loss = step(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1


def _instantiate_data(name: str):
    """mbtasks' data module for the set, composed as the CLI would (same splits as the mbtasks run)."""
    from hydra.utils import instantiate

    dm = instantiate(compose_cfg(mbtasks_args(name, "1m")).data)
    dm.setup("fit")
    return dm


def majority_rate(name: str) -> float | None:
    """Classification: the val split's most frequent class's share (what always answering it scores)."""
    if SETS[name][0] != "classification":
        return None
    labels = [label for _, label in _instantiate_data(name).datasets["val"].samples]
    return max(Counter(labels).values()) / len(labels)


def _val_accuracy(model: nn.Module, val, k: int, workers: int) -> float:
    from torchmetrics.classification import MulticlassAccuracy

    model.eval()
    acc = MulticlassAccuracy(k, average="micro")
    with torch.no_grad():
        for x, y in DataLoader(val, batch_size=128, num_workers=workers):
            acc.update(model(x), y)
    return float(acc.compute())


def classification_splits(name: str, size: int, train_tf):
    """(classes, train, val) of a shared ImageFolder set as the peers read it: ``train_tf`` for training,
    resize to size / 0.875 + centre crop for validation."""
    import albumentations as A

    from mbtasks.data.imagefolder import ImageFolderDataset

    dm = _instantiate_data(name)
    eval_tf = A.Compose([A.SmallestMaxSize(max_size=int(size / 0.875)), A.CenterCrop(size, size)])
    train = ImageFolderDataset(dm.datasets["train"].samples, train_tf, IMAGENET_MEAN, IMAGENET_STD)
    val = ImageFolderDataset(dm.datasets["val"].samples, eval_tf, IMAGENET_MEAN, IMAGENET_STD)
    return len(dm.class_names), train, val


def peer_classification(name: str, budget_s: float, workers: int, size: int) -> dict:
    import albumentations as A
    import timm

    k, train, val = classification_splits(
        name, size, A.Compose([A.RandomResizedCrop((size, size), scale=(0.25, 1.0)), A.HorizontalFlip()])
    )
    model = timm.create_model("mobilenetv1_100", pretrained=False, num_classes=k)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    loader = DataLoader(
        train,
        batch_size=64,
        shuffle=True,
        drop_last=len(train) > 64,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    steps = train_for(budget_s, loader, optimizer, lambda b: criterion(model(b[0]), b[1]))
    return {"metric": _val_accuracy(model, val, k, workers), "steps": steps}


TUTORIAL_BATCH = 4  # the transfer-learning tutorial's batch size


def peer_classification_pretrained(name: str, budget_s: float, workers: int, size: int, weights: Path) -> dict:
    """torchvision ``mobilenet_v2`` from the ImageNet file, fine-tuned as the PyTorch transfer-learning
    tutorial fine-tunes (every layer, SGD 1e-3 momentum 0.9, batch 4, StepLR 7 of 25 epochs)."""
    import albumentations as A
    from torchvision.models import mobilenet_v2

    # the tutorial's RandomResizedCrop(224) + RandomHorizontalFlip (torchvision's default scale 0.08-1),
    # and Resize(256) + CenterCrop(224), at ``size``
    k, train, val = classification_splits(
        name, size, A.Compose([A.RandomResizedCrop((size, size), scale=(0.08, 1.0)), A.HorizontalFlip()])
    )
    model = mobilenet_v2()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.classifier[1] = nn.Linear(model.last_channel, k)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    # drop_last: a last batch of one image would give BatchNorm a single value per channel at small sizes
    loader = DataLoader(
        train,
        batch_size=TUTORIAL_BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    criterion = nn.CrossEntropyLoss()
    model.train()
    steps = train_for(budget_s, loader, optimizer, lambda b: criterion(model(b[0]), b[1]), schedule=tutorial_step_lr)
    return {"metric": _val_accuracy(model, val, k, workers), "steps": steps}


def peer_detection(name: str, budget_s: float, workers: int, size: int = 320) -> dict:
    import albumentations as A
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from mbtasks.data.detection import DetectionDataset, detection_collate
    from mbtasks.metrics.coco import CocoMeanAP
    from mbtasks.models.detection.postprocess import to_original

    size = 320  # the model's own transform resizes to 320 x 320 whatever ``size``; resizing first saves decoding
    dm = _instantiate_data(name)
    k = len(dm.class_names)
    bbox = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3, clip=True)
    train_tf = A.Compose([A.Resize(size, size), A.HorizontalFlip()], bbox_params=bbox)
    unit = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # [0, 1] images: the model normalises them itself
    train = DetectionDataset(dm.datasets["train"].records, train_tf, size, *unit, train=True)
    loader = DataLoader(
        train,
        batch_size=8,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=detection_collate,
    )
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
                dets = [
                    {"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in model(list(images))
                ]
                metric.update(to_original(dets, (size, size), [t["orig_size"] for t in targets]), targets)
        stats = metric.compute()
        result["metric" if split == "val" else "test_map_50"] = stats["map_50"]
        result[f"{split}_map"] = stats["map"]
    return result


def peer_faces(name: str, budget_s: float, workers: int, size: int) -> dict:
    import albumentations as A
    import timm
    from pytorch_metric_learning import losses, miners, samplers

    from mbtasks.data.faces import EvalImageDataset, IdentityDataset
    from mbtasks.metrics.verification import evaluate_verification, pair_distances

    dm = _instantiate_data(name)
    train_tf = A.Compose(
        [
            A.Resize(size, size),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.7),
            A.HorizontalFlip(),
        ]
    )
    train = IdentityDataset(dm.train_set.samples, train_tf, IMAGENET_MEAN, IMAGENET_STD)
    labels = [label for _, label in dm.train_set.samples]
    batch = min(64, 4 * len(set(labels)))  # the sampler needs m x identities >= batch (Yale: 11 identities)
    sampler = samplers.MPerClassSampler(labels, m=4, batch_size=batch, length_before_new_iter=max(len(labels), batch))
    loader = DataLoader(
        train, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers, persistent_workers=workers > 0
    )
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
    res = evaluate_verification(
        pair_distances(embeddings.numpy(), pairs.pairs), pairs.same, pairs.folds, pairs.num_folds
    )
    return {"metric": float(res.accuracy), "steps": steps}


# (label, short label for the table, function) by (task, start)
PEERS = {
    ("classification", "scratch"): (
        "timm mobilenetv1_100 scratch, AdamW/cosine",
        "timm V1 scratch",
        peer_classification,
    ),
    ("classification", "pretrained"): (
        "torchvision mobilenet_v2 ImageNet, tutorial SGD/StepLR",
        "tv V2 tutorial",
        peer_classification_pretrained,
    ),
    ("detection", "scratch"): (
        "torchvision ssdlite320_mobilenet_v3_large scratch, SGD 0.02/cosine",
        "ssdlite scratch",
        peer_detection,
    ),
    ("embedding", "scratch"): (
        "timm mobilenetv1_100 scratch + PML triplet semi-hard, m-per-class",
        "timm V1+PML scratch",
        peer_faces,
    ),
}


def peer_for(task: str, start: str) -> tuple[str, str, Callable]:
    """Detection and faces have one (scratch) peer for both starts."""
    return PEERS.get((task, start)) or PEERS[(task, "scratch")]


def run_peer(
    name: str, start: str, budget_s: float, threads: int, workers: int, size: int, weights: Path | None = None
) -> dict:
    """The peer of ``start``'s row (detection and faces: the scratch peer for both starts)."""
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(threads)
    task = SETS[name][0]
    label, short, fn = peer_for(task, start)
    start_t = time.monotonic()
    out = (
        fn(name, budget_s, workers, size, weights)
        if fn is peer_classification_pretrained
        else fn(name, budget_s, workers, size)
    )
    return {**out, "wall_s": time.monotonic() - start_t, "peer": label, "short": short, "input_size": size}


def parse_sizes(specs: list[str], names: list[str]) -> dict[tuple[str, str], int]:
    """``--size SET=PX`` (every start) / ``SET:START=PX`` -> {(set, start): px}."""
    sizes: dict[tuple[str, str], int] = {}
    for spec in specs:
        key, _, value = spec.partition("=")
        name, _, start = key.partition(":")
        if name not in SETS or (start and start not in STARTS) or not value.isdigit() or int(value) < 32:
            raise ValueError(f"{spec!r}: expected SET=PX or SET:START=PX (START: {'|'.join(STARTS)}, PX >= 32)")
        for s in [start] if start else STARTS:
            sizes[(name, s)] = int(value)
    return {(n, s): sizes.get((n, s), default_size(n, s)) for n in names for s in STARTS}


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


COLUMNS = [
    "set",
    "metric",
    "start",
    "model @ px",
    "ours",
    "peer",
    "peer is",
    "ours / peer",
    "ours / scratch",
    "majority",
    "TEST mAP50 *",
    "steps o / p",
    "wall s o / p",
]
LEGEND = (
    "val split throughout; ours / peer: the row's ratio (pretrained rows: pretrained / peer); ours / scratch: "
    "our pretrained row / our scratch row; majority (classification): the val share of the most frequent "
    "class, what always answering it scores; * TEST mAP50 (detection): mbtasks' held-out test split "
    "(metrics.json test/map_50 of the checkpoint it tests), reported only, never used to choose anything"
)


def main(argv: Iterable[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="5m", help="wall-clock budget per run, e.g. 5m, 20s (default 5m)")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated sets (default all: {','.join(SETS)})")
    p.add_argument(
        "--start",
        choices=("scratch", "pretrained", "both"),
        default="both",
        help="scratch (backbone.pretrained=null), pretrained (ImageNet weights on the machine, "
        "auto fine-tunes them) or both rows per set (default both)",
    )
    p.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="SET[:START]=PX",
        help="input size of a set's rows (every start, or one); repeatable",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=WEIGHTS,
        help=f"the original ImageNet files the pretrained rows start from (default {WEIGHTS})",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads of the peer loops (mbtasks: torch's default)")
    p.add_argument("--workers", type=int, default=2, help="loader workers of the peer loops (mbtasks' default: 2)")
    p.add_argument(
        "--runs",
        type=Path,
        default=RESULTS / "real_data_runs",
        help="where the mbtasks run dirs go (a dated folder per invocation)",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/real_data.json)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an mbtasks override for every set and start (a recipe to try against the defaults; repeatable)",
    )
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
    try:
        sizes = parse_sizes(args.size, names)
    except ValueError as err:
        p.error(f"--size: {err}")
    starts = list(STARTS) if args.start == "both" else [args.start]
    runs = args.runs / time.strftime("%Y-%m-%d_%H-%M-%S")  # a fresh run dir per invocation
    tmp = Path(tempfile.mkdtemp(prefix="mbtasks_real_data_weights_"))
    try:
        run_all(args, names, starts, sizes, budget_s, runs, WeightsCache(tmp, args.weights))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_all(
    args,
    names: list[str],
    starts: list[str],
    sizes: dict[tuple[str, str], int],
    budget_s: float,
    runs: Path,
    cache: WeightsCache,
) -> None:
    rows, results = [], {}
    for name in names:
        task, _, _, metric, metric_name = SETS[name]
        majority = majority_rate(name)
        entry = results[name] = {"task": task, "metric": metric, "majority_val": majority, "starts": {}}
        peers: dict[tuple, dict] = {}  # detection / faces: one scratch peer for both starts
        for start in starts:
            size = sizes[(name, start)]
            if start == "pretrained":
                print(f"[{name}] ImageNet weights for the pretrained row ...", flush=True)
                extra, model = pretrained_backbone(name, cache)
                env = cache.env()
                print(f"  backbone: {model}", flush=True)
            else:
                extra, model, env = [], "the task's default backbone, from scratch", None
            print(f"[{name}] mbtasks {start} @{size}, {args.budget} ...", flush=True)
            ours = run_mbtasks(name, args.budget, runs / f"{name}_{start}", [*extra, *args.override], size, start, env)
            ours["model"] = model
            shown = ours.get("backbone") or model.split(",")[0]
            if args.no_peer:
                peer = {"metric": None, "steps": "-", "wall_s": float("nan"), "peer": "-", "short": "-"}
            else:
                key = (start if task == "classification" else "scratch", size)
                if key not in peers:
                    label = peer_for(task, start)[0]
                    print(f"[{name}] peer ({label}) @{size}, {args.budget} ...", flush=True)
                    weights = cache.files[TV_V2][0] if key[0] == "pretrained" else None
                    peers[key] = run_peer(name, key[0], budget_s, args.threads, args.workers, size, weights)
                peer = peers[key]
            ratio = ours["metric"] / peer["metric"] if ours["metric"] is not None and peer["metric"] else None
            scratch = entry["starts"].get("scratch", {}).get("mbtasks", {}).get("metric")
            gain = (
                ours["metric"] / scratch if start == "pretrained" and scratch and ours["metric"] is not None else None
            )
            entry["starts"][start] = {
                "input_size": size,
                "mbtasks": ours,
                "peer": peer,
                "ratio": ratio,
                "vs_ours_scratch": gain,
            }
            rows.append(
                [
                    name,
                    metric_name,
                    start,
                    f"{shown} @{size}",
                    fmt(ours["metric"]),
                    fmt(peer["metric"]),
                    peer["short"],
                    fmt(ratio),
                    fmt(gain),
                    fmt(majority),
                    fmt(ours.get("test_map_50")) if task == "detection" else "",
                    f"{ours['steps']} / {peer['steps']}",
                    f"{ours['wall_s']:.0f} / " + ("-" if math.isnan(peer["wall_s"]) else f"{peer['wall_s']:.0f}"),
                ]
            )
            print_table(f"real data, {args.budget} per run", COLUMNS, rows)
            print(LEGEND, flush=True)
    write_results(
        "real_data",
        {
            "budget": args.budget,
            "budget_s": budget_s,
            "starts": starts,
            "overrides": args.override,
            "weights": str(args.weights),
            "sets": results,
            "machine_at_end": machine(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
