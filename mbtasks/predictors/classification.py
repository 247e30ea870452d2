"""Classification predictions: top-k labels and scores per image, as JSON."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from mbtasks.modes.common import write_json_atomic
from mbtasks.predictors.common import device_of, iter_batches

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(task, train_cfg: DictConfig, cfg: DictConfig, files: list[Path], run_dir: Path) -> dict:
    """Write ``run_dir/predictions.json``: ``[{file, label, score, top_k: [{label, score}]}]``."""
    device = device_of(task)
    names = task.class_names
    k = min(int(cfg.predict.top_k), len(names))
    results, skipped = [], {}
    for paths, _, batch in iter_batches(files, train_cfg, int(cfg.predict.batch_size), skipped):
        probs = task.predict_step(batch.to(device)).cpu()
        scores, idx = probs.topk(k, dim=1)
        for path, s_row, i_row in zip(paths, scores.tolist(), idx.tolist(), strict=True):
            top = [{"label": names[i], "score": round(s, 6)} for s, i in zip(s_row, i_row, strict=True)]
            results.append({"file": str(path), "label": top[0]["label"], "score": top[0]["score"], "top_k": top})
    out = {"predictions": results, "skipped": skipped, "class_names": names}
    write_json_atomic(run_dir / "predictions.json", out)
    for path, reason in skipped.items():
        log.warning("skipped %s: %s", path, reason)
    log.info("wrote %d predictions to %s", len(results), run_dir / "predictions.json")
    return out
