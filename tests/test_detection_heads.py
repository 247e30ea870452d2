"""SSD pieces as plain nn code: default boxes, box coding, matching, loss, post-processing, head sizes."""

from __future__ import annotations

import math

import pytest
import torch

from mbtasks.backbones.mobilenet_v1 import MobileNetV1
from mbtasks.backbones.mobilenet_v2 import MobileNetV2
from mbtasks.models.detection.anchors import DefaultBoxes
from mbtasks.models.detection.box_coding import BoxCoder
from mbtasks.models.detection.loss import SSDLoss, hard_negative_mask
from mbtasks.models.detection.matching import BACKGROUND, match_default_boxes
from mbtasks.models.detection.postprocess import postprocess_detections
from mbtasks.models.detection.ssd import SSDDetector
from mbtasks.models.detection.ssd_head import SSDHead


def test_default_boxes_count_and_shape_per_map():
    boxes = DefaultBoxes(aspect_ratios=[[2], [2, 3]] + [[2, 3]] * 4).build(6)
    assert boxes.num_anchors_per_location() == [4, 6, 6, 6, 6, 6]
    grids = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    anchors = boxes((300, 300), grids)
    expected = 19 * 19 * 4 + sum(h * w * 6 for h, w in grids[1:])
    assert anchors.shape == (expected, 4)
    # first cell of the first map: centred at half a cell, smallest box = scale 0.2 of 300 px, square
    first = anchors[0]
    assert torch.allclose((first[:2] + first[2:]) / 2, torch.tensor([150 / 19, 150 / 19]), atol=1e-3)
    assert torch.allclose(first[2:] - first[:2], torch.tensor([60.0, 60.0]), atol=1e-3)
    # the coarsest map's boxes are centred on the image
    last = anchors[-6:]
    assert torch.allclose((last[:, :2] + last[:, 2:]) / 2, torch.full((6, 2), 150.0), atol=1e-3)
    # cached: same object for the same sizes
    assert boxes((300, 300), grids) is anchors


def test_default_boxes_explicit_scales_and_config_errors():
    boxes = DefaultBoxes([[2]], scales=[0.1, 0.3, 0.9]).build(2)
    anchors = boxes((100, 100), [(2, 2), (1, 1)])
    sides = anchors[:4, 2:] - anchors[:4, :2]
    assert torch.allclose(sides[0], torch.tensor([10.0, 10.0]), atol=1e-4)
    assert torch.allclose(sides[1], torch.full((2,), 100 * math.sqrt(0.1 * 0.3)), atol=1e-4)
    assert torch.allclose(sides[2], torch.tensor([10 * math.sqrt(2), 10 / math.sqrt(2)]), atol=1e-4)
    with pytest.raises(ValueError, match="aspect_ratios has 2 entries"):
        DefaultBoxes([[2], [3]]).build(6)
    with pytest.raises(ValueError, match="scales has 3 values but needs 7"):
        DefaultBoxes([[2]], scales=[0.1, 0.2, 0.3]).build(6)


def test_box_coding_round_trip_and_weights():
    coder = BoxCoder((10, 10, 5, 5))
    anchors = torch.tensor([[10.0, 10.0, 50.0, 30.0], [0.0, 0.0, 100.0, 100.0], [5.0, 60.0, 25.0, 120.0]])
    boxes = torch.tensor([[12.0, 8.0, 60.0, 33.0], [20.0, 30.0, 40.0, 90.0], [5.0, 60.0, 25.0, 120.0]])
    deltas = coder.encode(boxes, anchors)
    assert torch.allclose(deltas[2], torch.zeros(4), atol=1e-6)  # identical box -> zero offsets
    # centre x offset: (36 - 30) / 40 * 10 = 1.5; width: 5 * log(48 / 40)
    assert deltas[0, 0].item() == pytest.approx(1.5)
    assert deltas[0, 2].item() == pytest.approx(5 * math.log(48 / 40))
    assert torch.allclose(coder.decode(deltas, anchors), boxes, atol=1e-4)
    batch = coder.decode(deltas.expand(2, 3, 4), anchors)
    assert batch.shape == (2, 3, 4)


def test_matcher_threshold_and_best_anchor_per_ground_truth():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1.0 with gt 0
            [1.0, 1.0, 11.0, 11.0],  # IoU ~0.68 with gt 0
            [50.0, 50.0, 60.0, 60.0],  # no overlap with anything
            [20.0, 20.0, 40.0, 40.0],  # IoU 0.25 with gt 1: gt 1's best box -> forced match
        ]
    )
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    matches = match_default_boxes(gt, anchors, iou_threshold=0.5)
    assert matches.tolist() == [0, 0, BACKGROUND, 1]
    empty = match_default_boxes(torch.zeros((0, 4)), anchors)
    assert (empty == BACKGROUND).all()


def test_hard_negative_mask_keeps_three_hardest_negatives_per_positive():
    cls_loss = torch.tensor([[0.1, 5.0, 0.2, 4.0, 3.0, 0.3, 2.0, 1.0, 0.05, 0.0]])
    positive = torch.zeros(1, 10, dtype=torch.bool)
    positive[0, 1] = True  # the highest loss is a positive: never counted as a negative
    neg = hard_negative_mask(cls_loss, positive, neg_pos_ratio=3)
    assert neg.sum().item() == 3
    assert neg[0].nonzero().squeeze(1).tolist() == [3, 4, 6]
    assert not (neg & positive).any()
    # an image without positives: none by the paper's rule, min_negatives otherwise
    none = hard_negative_mask(cls_loss, torch.zeros_like(positive), 3)
    assert none.sum().item() == 0
    some = hard_negative_mask(cls_loss, torch.zeros_like(positive), 3, min_negatives=2)
    assert some[0].nonzero().squeeze(1).tolist() == [1, 3]


def test_ssd_loss_targets_and_values():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [20.0, 20.0, 30.0, 30.0],
            [50.0, 50.0, 60.0, 60.0],
            [70.0, 70.0, 80.0, 80.0],
            [0.0, 50.0, 10.0, 60.0],
        ]
    )
    loss_fn = SSDLoss(BoxCoder(), iou_threshold=0.5, neg_pos_ratio=3)
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]
    classes, offsets = loss_fn.targets(anchors, targets)
    assert classes.tolist() == [[3, 0, 0, 0, 0], [0, 0, 0, 0, 0]]  # label 2 -> class 3 (0 = background)
    assert torch.allclose(offsets[0, 0], torch.zeros(4), atol=1e-6)
    logits = torch.zeros(2, 5, 4, requires_grad=True)
    regression = torch.zeros(2, 5, 4, requires_grad=True)
    out = loss_fn(logits, regression, anchors, targets)
    # uniform logits: CE = log(4) for the 1 positive + 3 negatives, over N = 1 positive; exact box -> 0
    assert out["loss"].item() == pytest.approx(4 * math.log(4), rel=1e-5)
    assert out["loss_box"].item() == pytest.approx(0.0)
    assert out["num_positives"].item() == 1
    out["loss"].backward()
    assert logits.grad.abs().sum() > 0


def _detector(backbone, num_classes=3, depthwise=False, kernel_size=1):
    head = SSDHead(
        backbone.out_channels,
        num_classes + 1,
        DefaultBoxes([[2, 3]]),
        width=backbone.width,
        depthwise=depthwise,
        kernel_size=kernel_size,
        act="relu6" if depthwise else "relu",
    )
    return SSDDetector(backbone, head).eval()


@pytest.mark.parametrize("width", [1.0, 0.5, 0.35])
def test_detector_outputs_match_default_boxes_at_any_width(width):
    model = _detector(MobileNetV1(width, out_indices=(3, 4)))
    out = model(torch.zeros(2, 3, 128, 128))
    # maps 8x8, 4x4, then extras 2x2, 1x1, 1x1, 1x1; 6 boxes per cell
    a = (64 + 16 + 4 + 1 + 1 + 1) * 6
    assert out.cls_logits.shape == (2, a, 4)
    assert out.bbox_regression.shape == (2, a, 4)
    assert out.anchors.shape == (a, 4)


def test_ssdlite_on_v2_expansion_taps():
    backbone = MobileNetV2(0.5, out_indices=(3, 4), expansion_taps=True)
    assert backbone.out_channels[0] == 6 * backbone.blocks[13].conv_expand[0].in_channels
    model = _detector(backbone, depthwise=True)
    assert any(m.groups > 1 for m in model.head.cls_heads.modules() if isinstance(m, torch.nn.Conv2d))
    out = model(torch.zeros(1, 3, 96, 96))
    assert out.cls_logits.shape[1] == out.anchors.shape[0]


def test_postprocess_format_nms_and_limits():
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [1.0, 1.0, 21.0, 21.0], [50.0, 50.0, 70.0, 70.0]])
    logits = torch.full((1, 3, 3), -10.0)
    logits[0, 0, 1] = 5.0  # anchor 0: class 0, strong
    logits[0, 1, 1] = 4.0  # anchor 1 overlaps anchor 0, same class: suppressed
    logits[0, 1, 2] = 4.5  # ... but as class 1 it survives (NMS is per class)
    logits[0, 2, 0] = 5.0  # anchor 2: background
    regression = torch.zeros(1, 3, 4)
    dets = postprocess_detections(
        logits, regression, anchors, BoxCoder(), (100, 100), score_threshold=0.05, nms_iou=0.5, max_detections=10
    )
    assert len(dets) == 1
    d = dets[0]
    assert set(d) == {"boxes", "scores", "labels"}
    assert d["boxes"].shape == (2, 4) and d["scores"].shape == (2,) and d["labels"].dtype == torch.int64
    assert d["labels"].tolist() == [0, 1]
    assert (d["scores"][:-1] >= d["scores"][1:]).all()
    assert torch.allclose(d["boxes"][0], anchors[0])
    capped = postprocess_detections(logits, regression, anchors, BoxCoder(), (100, 100), 0.05, 0.5, max_detections=1)
    assert capped[0]["boxes"].shape == (1, 4)
    clipped = postprocess_detections(
        logits, torch.tensor([[[0.0, 0.0, 30.0, 30.0]] * 3]), anchors, BoxCoder(), (100, 100), 0.05, 0.5, 10
    )
    assert clipped[0]["boxes"].min() >= 0 and clipped[0]["boxes"].max() <= 100
