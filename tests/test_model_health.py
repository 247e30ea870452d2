"""No silent useless model: each task's health checks (named warnings with the likely cause and the key
to change) at the end of training, in metrics.json and on load; and honest run-dir plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mbtasks.callbacks import plots
from mbtasks.tasks.classification import figures as classification_figures
from mbtasks.tasks.classification import health as classification_health
from mbtasks.tasks.detection import health as detection_health
from mbtasks.tasks.embedding import figures as embedding_figures
from mbtasks.tasks.embedding import health as embedding_health
from mbtasks.tasks.health import TrainingFacts
from tests.conftest import TINY_CLASSES, run_mode

FEW = TrainingFacts(steps=12, pretrained=True, lr=3e-3)
MANY = TrainingFacts(steps=5000, pretrained=True, lr=3e-3)


def names(warnings) -> set[str]:
    return {w.name for w in warnings}


# ------------------------------------------------------------------ the checks on crafted outputs
def test_classifier_answering_bees_to_everything_is_named():
    # hymenoptera's validation split (70 ants, 83 bees) and a model that answers "bees" every time
    confusion = np.array([[0, 70], [0, 83]])
    warnings = classification_health.check(confusion, ["ants", "bees"], MANY)
    assert names(warnings) == {"below_majority_class", "one_class"}
    text = " ".join(w.message for w in warnings)
    assert "0.542" in text and "'bees'" in text and "100%" in text
    # the likely cause and the keys to change; pretrained with many steps: the LR first
    assert "too high for pretrained weights: lower optimizer.lr=0.003" in text and "train.time" in text
    assert text.index("optimizer.lr") < text.index("train.time")
    # a good model, and one that is right on a one-sided data set, say nothing
    assert classification_health.check(np.array([[60, 10], [12, 71]]), ["ants", "bees"], MANY) == []
    assert classification_health.check(np.array([[95, 0], [2, 3]]), ["a", "b"], MANY) == []
    assert classification_health.check(np.zeros((2, 2)), ["a", "b"], MANY) == []


def test_likely_cause_puts_too_few_steps_first():
    cause = FEW.likely_cause()
    assert cause.index("too few training steps (12)") < cause.index("optimizer.lr")
    assert "optimizer.lr" not in TrainingFacts(steps=12, pretrained=False).likely_cause()


def test_collapsed_embedder_is_named():
    rng = np.random.default_rng(0)
    same = np.arange(200) % 2 == 0
    # ORL's collapse: every distance near 0 and a stored threshold of 0.00017 on the 0-4 scale
    warnings = embedding_health.check(rng.uniform(0, 4e-4, 200), same, 0.00017, 0.51, FEW)
    assert names(warnings) == {"collapsed_embeddings", "tiny_threshold", "overlapping_distances"}
    assert "0.00017" in " ".join(w.message for w in warnings)
    # distances spread but the kinds overlap: only that
    overlap = embedding_health.check(rng.uniform(0.5, 3, 200), same, 1.2, 0.52, MANY)
    assert names(overlap) == {"overlapping_distances"}
    # separated kinds
    good = np.where(same, rng.uniform(0.2, 0.9, 200), rng.uniform(1.1, 3, 200))
    assert embedding_health.check(good, same, 1.0, 1.0, MANY) == []


def detection_rows(boxes_per_image, scores, gt_per_image, size=(100, 200)):
    """CocoMeanAP's (images, dets, gts) rows: one detection and one ground-truth box per image."""
    h, w = size
    images = np.array([[i, h, w, 1, 1] for i in range(len(boxes_per_image))], float)
    dets = np.array([[i, *b, s, 0] for i, (b, s) in enumerate(zip(boxes_per_image, scores, strict=True))], float)
    gts = np.array([[i, *b, 0, 0, 0] for i, b in enumerate(gt_per_image)], float)
    return images, dets, gts


def test_detector_outputting_nothing_or_the_same_box_is_named():
    moving = [[10 * i, 5 * i, 10 * i + 40, 5 * i + 30] for i in range(6)]
    same = [[50, 20, 90, 60]] * 6
    rows = detection_rows(same, [0.9] * 6, moving)
    assert names(detection_health.check(*rows, 0.0, FEW)) == {"same_box", "no_objects_found"}
    rows = detection_rows(moving, [0.05] * 6, moving)
    warnings = detection_health.check(*rows, 0.3, FEW)
    assert names(warnings) == {"no_detections"} and "best score is 0.050" in warnings[0].message
    nothing = detection_rows([], [], moving)
    nothing = (np.array([[i, 100, 200, 0, 1] for i in range(6)], float), nothing[1], nothing[2])
    assert "it outputs no box at all" in detection_health.check(*nothing, 0.0, FEW)[0].message
    # boxes that follow the objects, and the same box on objects that do not move, are fine
    assert detection_health.check(*detection_rows(moving, [0.9] * 6, moving), 0.8, MANY) == []
    assert detection_health.check(*detection_rows(same, [0.9] * 6, same), 0.9, MANY) == []


# ------------------------------------------------------------------ end to end: train, metrics.json, load
@pytest.fixture(scope="module")
def useless_run(tmp_path_factory):
    """A 1-epoch classifier on a one-sided validation split (6 circles, 1 square, 1 triangle; majority rate
    0.75): a few steps cannot beat it. Records the TensorBoard prediction grid's inputs and the test plots."""
    from mbtasks.data.synthetic.shapes import make_shapes_classification

    root = make_shapes_classification(
        tmp_path_factory.mktemp("shapes"),
        classes=TINY_CLASSES,
        train_per_class=4,
        val_per_class=6,
        test_per_class=2,
        image_size=32,
        seed=1,
    )
    for cls in TINY_CLASSES[1:]:
        for path in sorted((root / "val" / cls).iterdir())[1:]:
            path.unlink()
    grids, figures = [], {}
    grid, save = classification_figures.prediction_grid, plots.save_figure

    def record_grid(images, labels, preds, **kwargs):
        grids.append((labels.tolist(), preds.tolist()))
        return grid(images, labels, preds, **kwargs)

    def record_figure(fig, path):
        figures[Path(path).name] = (
            fig._suptitle.get_text() if fig._suptitle else "",
            [ax.get_title() for ax in fig.axes if ax.axison],
        )
        return save(fig, path)

    run_dir = tmp_path_factory.mktemp("useless")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(classification_figures, "prediction_grid", record_grid)
        mp.setattr(plots, "save_figure", record_figure)
        metrics = run_mode(
            [
                f"data.root={root}",
                "data.generator=null",
                "data.image_size=32",
                "data.batch_size=2",
                "backbone.width=0.25",
                "trainer.max_epochs=1",
                "task.log_images=16",
            ],
            run_dir,
        )
    return {"root": root, "run_dir": run_dir, "metrics": metrics, "grids": grids, "figures": figures}


def test_training_names_the_useless_model_in_metrics_json(useless_run):
    saved = json.loads((useless_run["run_dir"] / "metrics.json").read_text())
    assert saved["warnings"] == useless_run["metrics"]["warnings"]
    assert any(w.startswith("below_majority_class: ") and "0.750" in w and "train.time" in w for w in saved["warnings"])
    ckpt = torch.load(useless_run["run_dir"] / "checkpoints" / "best.ckpt", weights_only=True)
    assert [f"{w['name']}: {w['message']}" for w in ckpt["mbtasks"]["health"]] == saved["warnings"]


def test_loading_a_useless_checkpoint_warns(useless_run, tmp_path, caplog):
    import mbtasks

    best = useless_run["run_dir"] / "checkpoints" / "best.ckpt"
    with caplog.at_level(logging.WARNING, logger="mbtasks"):
        model = mbtasks.load(best, device="cpu")
    assert f"{best}: this model may be useless: below_majority_class: " in caplog.text
    assert "below_majority_class" in names(model.task.health)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mbtasks"):
        run_mode(
            ["mode=predict", f"ckpt_path={best}", f"predict.input={useless_run['root'] / 'test'}"], tmp_path / "predict"
        )
    assert "this model may be useless: below_majority_class" in caplog.text
    tested = run_mode(["mode=test", f"ckpt_path={best}"], tmp_path / "test")
    assert any(w.startswith("below_majority_class: ") for w in tested["warnings"])


def test_prediction_grid_shows_every_class_with_true_labels(useless_run):
    # the validation split is read in class order; with batches of 2 the first batch is all circles,
    # and a model answering "circle" for everything looked perfect in the grid
    labels, preds = useless_run["grids"][-1]
    assert sorted(labels) == [0] * 6 + [1, 2]
    assert len(preds) == len(labels)


def test_confusion_matrix_names_its_split(useless_run):
    title, _ = useless_run["figures"]["confusion_matrix.png"]
    assert title.startswith("test split, 6 images")
    figure = classification_figures.confusion_matrix(np.eye(3, dtype=int), TINY_CLASSES, split="val")
    assert "val split" in figure._suptitle.get_text() and "no test split" in figure._suptitle.get_text()


# ------------------------------------------------------------------ plots and stored metrics
def test_detection_sizes_without_objects_are_null_and_not_plotted(tmp_path):
    from tests.test_detection_cli import tiny_overrides

    figures = {}
    save = plots.save_figure

    def record_figure(fig, path):
        figures[Path(path).name] = [ax.get_title() for ax in fig.axes if ax.axison]
        return save(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "save_figure", record_figure)
        run_mode(tiny_overrides(tmp_path / "shapes"), tmp_path / "det")
    saved = json.loads((tmp_path / "det" / "metrics.json").read_text())
    # 64-px images hold no large objects: pycocotools says -1, which is no measurement
    for stage in ("val", "test"):
        assert saved[f"{stage}/map_large"] is None and saved[f"{stage}/mar_large"] is None
        assert all(v is None or v >= 0 for k, v in saved.items() if k.startswith(f"{stage}/ma"))
    panels = figures["results.png"]
    assert "val/map_large" not in panels and "val/map_50" in panels
    assert isinstance(saved["warnings"], list)
    ckpt = torch.load(tmp_path / "det" / "checkpoints" / "best.ckpt", weights_only=True)
    assert [f"{w['name']}: {w['message']}" for w in ckpt["mbtasks"]["health"]] == saved["warnings"]


def test_embedding_run_stores_its_checks_and_plots_no_empty_tar_panel(tmp_path):
    from tests.test_embedding_cli import tiny_overrides

    figures = {}
    save = plots.save_figure

    def record_figure(fig, path):
        figures[Path(path).name] = [ax.get_title() for ax in fig.axes if ax.axison]
        return save(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "save_figure", record_figure)
        run_mode(tiny_overrides(tmp_path / "faces"), tmp_path / "emb")
    saved = json.loads((tmp_path / "emb" / "metrics.json").read_text())
    # 16 validation pairs cannot measure TAR at FAR 1e-4: null in metrics.json, no empty panel
    assert saved["val/tar_at_far_1e-4"] is None
    assert "val/tar_at_far_1e-4" not in figures["results.png"] and "val/threshold" in figures["results.png"]
    ckpt = torch.load(tmp_path / "emb" / "checkpoints" / "best.ckpt", weights_only=True)
    assert [f"{w['name']}: {w['message']}" for w in ckpt["mbtasks"]["health"]] == saved["warnings"]


def test_results_png_leaves_out_metrics_never_measured(tmp_path, monkeypatch):
    records = [
        {"epoch": e, "step": e, "train/loss": 1.0 / (e + 1), "val/tar_at_far_1e-4": None, "val/threshold": 0.00017}
        for e in range(2)
    ]
    (tmp_path / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    panels = {}
    save = plots.save_figure

    def record_figure(fig, path):
        panels[Path(path).name] = [ax.get_title() for ax in fig.axes if ax.axison]
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", record_figure)
    plots.write_results(tmp_path)
    assert panels["results.png"] == ["train/loss", "val/threshold"]
    assert "val/tar_at_far_1e-4" in (tmp_path / "results.csv").read_text()  # the table keeps the column


def test_a_tiny_threshold_is_printed_with_its_digits():
    from mbtasks.metrics.verification import evaluate_verification

    rng = np.random.default_rng(0)
    same = np.arange(40) % 2 == 0
    distances = np.where(same, rng.uniform(0, 1e-4, 40), rng.uniform(1e-4, 4e-4, 40))
    result = evaluate_verification(distances, same, fars=(1e-3, 1e-4))
    roc, hist = (
        embedding_figures.roc_at_threshold(result, distances, same, 0.00017),
        embedding_figures.distance_histogram(distances, same, 0.00017),
    )
    labels = [t.get_text() for fig in (roc, hist) for t in fig.axes[0].get_legend().get_texts()]
    assert any("threshold 0.00017" in t for t in labels) and not any(
        "0.000:" in t or t.endswith("0.000") for t in labels
    )
