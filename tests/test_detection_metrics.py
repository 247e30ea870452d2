"""COCO mAP through pycocotools: perfect predictions score 1, none score 0, crowd regions are ignored."""

from __future__ import annotations

import pytest
import torch

from mbtasks.metrics.coco import STAT_NAMES, CocoMeanAP, evaluate_coco, results_to_coco


def target(image_id, boxes, labels, crowd=None, size=(200, 300)):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {
        "image_id": image_id,
        "orig_size": size,
        "gt_boxes": boxes,
        "gt_labels": torch.tensor(labels, dtype=torch.int64),
        "gt_iscrowd": torch.tensor(crowd or [0] * len(labels), dtype=torch.int64),
        "gt_area": torch.zeros(len(labels)),
    }


TARGETS = [
    target(1, [[10, 10, 50, 60], [100, 20, 250, 180]], [0, 2]),
    target(2, [[5, 5, 25, 30]], [1]),
    target(3, [], []),
]


def pred(boxes, labels, scores=None):
    n = len(labels)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores or [0.9] * n, dtype=torch.float32),
    }


def test_predictions_equal_to_ground_truth_score_one():
    metric = CocoMeanAP()
    metric.update([pred(t["gt_boxes"].tolist(), t["gt_labels"].tolist()) for t in TARGETS[:2]], TARGETS[:2])
    metric.update([pred([], [])], TARGETS[2:])  # an image without objects or detections
    stats = metric.compute()
    assert set(stats) == set(STAT_NAMES)
    for key in ("map", "map_50", "map_75", "mar_100"):
        assert stats[key] == pytest.approx(1.0)
    # one object per COCO size range: 20x25 = 500 px (small), 40x50 (medium), 150x160 (large)
    for key in ("map_small", "map_medium", "map_large"):
        assert stats[key] == pytest.approx(1.0)
    assert "Average Precision" in metric.summary_text


def test_no_detections_score_zero_and_wrong_class_scores_zero():
    metric = CocoMeanAP()
    metric.update([pred([], []), pred([], []), pred([], [])], TARGETS)
    stats = metric.compute()
    assert stats["map"] == 0.0
    metric.reset()
    metric.update([pred([], [])], [target(4, [[0, 0, 10, 10]], [0])])
    assert metric.compute()["map_large"] == -1.0  # no large objects at all: pycocotools says -1
    metric.reset()
    metric.update([pred(TARGETS[1]["gt_boxes"].tolist(), [2])], TARGETS[1:2])
    assert metric.compute()["map_50"] == 0.0


def test_crowd_regions_are_ignored_not_missed():
    t = target(7, [[10, 10, 50, 50], [100, 100, 200, 190]], [0, 0], crowd=[0, 1])
    metric = CocoMeanAP()
    # a detection inside the crowd region is neither a true nor a false positive
    metric.update([pred([[10, 10, 50, 50], [110, 110, 150, 150]], [0, 0], [0.9, 0.95])], [t])
    assert metric.compute()["map_50"] == pytest.approx(1.0)


def test_half_right_predictions_and_results_format():
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0},
        ],
    }
    results = results_to_coco(1, torch.tensor([[10.0, 10.0, 40.0, 40.0]]), torch.tensor([0.8]), [5])
    assert results == [{"image_id": 1, "category_id": 5, "bbox": [10.0, 10.0, 30.0, 30.0], "score": 0.8}]
    stats, text = evaluate_coco(gt, results)
    assert stats["map_50"] == pytest.approx(0.5)  # class 5 found (AP 1), class 9 missed (AP 0)
    assert "IoU=0.50" in text
