"""COCO box mAP through pycocotools (the official evaluation), as a torchmetrics ``Metric``.

Predictions and ground truth are accumulated per image in original pixels, turned into
COCO dicts at :meth:`CocoMeanAP.compute`, and scored by ``COCOeval``: the 12-number
summary (AP at IoU .50:.95, .50, .75, by object size; AR at 1/10/100 detections, by size).
Crowd / "difficult" ground truth is passed as ``iscrowd`` so pycocotools ignores matches to it.
"""

from __future__ import annotations

import contextlib
import io
import logging

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchvision.ops import box_convert

log = logging.getLogger(__name__)

# COCOeval.stats, in order.
STAT_NAMES: tuple[str, ...] = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


def defined(value: float) -> float:
    """A COCOeval stat as logged: pycocotools' -1 ("no ground truth of that kind", e.g. no small
    objects) becomes NaN, which metrics.json writes as null and the run-dir plots leave out."""
    return value if value >= 0 else float("nan")


def _coco_from_dict(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_coco(gt: dict, detections: list[dict], curves: dict | None = None) -> tuple[dict[str, float], str]:
    """Run pycocotools box evaluation.

    Args:
        gt: a COCO dataset dict (``images``, ``annotations`` with ``bbox`` xywh, ``area``,
            ``iscrowd``, ``category_id``; ``categories``). Annotation ids must be >= 1.
        detections: COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
        curves: if given, receives ``precision`` (COCOeval's ``(T=10 IoUs, R=101 recalls, K, A, M)``
            array, -1 where there is no ground truth) and ``category_ids`` (its K axis), for plots.

    Returns:
        the 12 stats by :data:`STAT_NAMES` (-1 where the data has no ground truth of that
        kind, as pycocotools reports) and the printed summary table.
    """
    coco_gt = _coco_from_dict(gt)
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(detections)
    else:  # pycocotools cannot load an empty result list; an empty result set scores 0.
        coco_dt = _coco_from_dict({"images": gt["images"], "categories": gt["categories"], "annotations": []})
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if curves is not None:
        curves.update(precision=evaluator.eval["precision"], category_ids=list(evaluator.params.catIds))
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}, text.getvalue()


def results_to_coco(image_id: int, boxes: torch.Tensor, scores: torch.Tensor, category_ids: list[int]) -> list[dict]:
    """COCO result entries for one image.

    Args:
        image_id: the image's id.
        boxes: ``(D, 4)`` x1y1x2y2 original pixels.
        scores: ``(D,)``.
        category_ids: ``(D,)`` category ids as a list.
    """
    xywh = box_convert(boxes.float(), "xyxy", "xywh").tolist()
    return [
        {
            "image_id": int(image_id),
            "category_id": int(c),
            "bbox": [round(v, 2) for v in b],
            "score": round(float(s), 5),
        }
        for b, s, c in zip(xywh, scores.tolist(), category_ids, strict=True)
    ]


def _rows(state, width: int) -> torch.Tensor:
    """A list state as one float64 CPU tensor; after a DDP sync torchmetrics has already cat'ed it."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    return dim_zero_cat(state).cpu() if state else torch.zeros((0, width), dtype=torch.float64)


def first_of_each_image(images: torch.Tensor, dets: torch.Tensor, gts: torch.Tensor):
    """Keep each image id's first evaluation only, with its own detections and ground truth.

    Lightning's ``DistributedSampler`` repeats images so every rank gets as many; scoring a
    repeat again would count its ground truth and detections twice.
    """
    det_parts = torch.split(dets, images[:, 3].long().tolist())
    gt_parts = torch.split(gts, images[:, 4].long().tolist())
    seen, keep = set(), []
    for k, image_id in enumerate(images[:, 0].long().tolist()):
        if image_id not in seen:
            seen.add(image_id)
            keep.append(k)
    if len(keep) == len(images):
        return images, dets, gts
    return (
        images[keep],
        torch.cat([det_parts[k] for k in keep]).reshape(-1, dets.shape[1]),
        torch.cat([gt_parts[k] for k in keep]).reshape(-1, gts.shape[1]),
    )


class CocoMeanAP(Metric):
    """COCO mAP over a stage (val / test); states are per-row tensors, so DDP gathers them.

    ``update(preds, targets)`` takes, per image, ``preds = {"boxes" (D, 4) x1y1x2y2 original
    pixels, "scores" (D,), "labels" (D,) in [0, K)}`` and the evaluation target of
    :class:`~mbtasks.data.detection.DetectionDataset` (``image_id``, ``orig_size``,
    ``gt_boxes``, ``gt_labels``, ``gt_iscrowd``, ``gt_area``).
    ``compute()`` returns the 12 stats by :data:`STAT_NAMES`.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # Under DDP, compute() first gathers these states from every rank (cat), so pycocotools
        # runs once on all images. image rows: (image_id, h, w, detections, ground truths);
        # detection rows: (image_id, x1, y1, x2, y2, score, label);
        # ground-truth rows: (image_id, x1, y1, x2, y2, label, iscrowd, area). The gather keeps each
        # rank's order in every state, so an image row's counts find its detections and ground truth.
        self.add_state("images", default=[], dist_reduce_fx="cat")
        self.add_state("dets", default=[], dist_reduce_fx="cat")
        self.add_state("gts", default=[], dist_reduce_fx="cat")
        self.summary_text = ""
        # COCOeval's precision array of the last compute() (category id = label + 1), for the run-dir plots
        self.curves: dict = {}
        # the (images, dets, gts) rows the last compute() scored, all ranks' (health checks read them)
        self.rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def update(self, preds: list[dict[str, torch.Tensor]], targets: list[dict]) -> None:
        for p, t in zip(preds, targets, strict=True):
            image_id = float(t["image_id"])
            h, w = t["orig_size"]
            n, g = p["boxes"].shape[0], t["gt_boxes"].shape[0]
            self.images.append(torch.tensor([[image_id, h, w, n, g]], dtype=torch.float64, device=self.device))
            self.dets.append(
                torch.cat(
                    [
                        torch.full((n, 1), image_id, dtype=torch.float64, device=self.device),
                        p["boxes"].double(),
                        p["scores"].double()[:, None],
                        p["labels"].double()[:, None],
                    ],
                    dim=1,
                )
            )
            self.gts.append(
                torch.cat(
                    [
                        torch.full((g, 1), image_id, dtype=torch.float64, device=self.device),
                        t["gt_boxes"].double().to(self.device),
                        t["gt_labels"].double().to(self.device)[:, None],
                        t["gt_iscrowd"].double().to(self.device)[:, None],
                        t["gt_area"].double().to(self.device)[:, None],
                    ],
                    dim=1,
                )
            )

    def compute(self) -> dict[str, float]:
        images = _rows(self.images, 5)
        dets, gts = _rows(self.dets, 7), _rows(self.gts, 8)
        if not len(images):
            self.rows = None
            return {name: -1.0 for name in STAT_NAMES}
        images, dets, gts = first_of_each_image(images, dets, gts)
        self.rows = (images, dets, gts)
        image_rows = {int(r[0]): r for r in images.numpy()}
        labels = sorted({int(v) for v in gts[:, 5].tolist()} | {int(v) for v in dets[:, 6].tolist()})
        gt_xywh = box_convert(gts[:, 1:5], "xyxy", "xywh").tolist()
        dataset = {
            "images": [{"id": i, "height": int(r[1]), "width": int(r[2])} for i, r in image_rows.items()],
            "categories": [{"id": c + 1, "name": str(c)} for c in labels],
            "annotations": [
                {
                    "id": k + 1,
                    "image_id": int(row[0]),
                    "bbox": box,
                    "category_id": int(row[5]) + 1,
                    "iscrowd": int(row[6]),
                    "area": float(row[7]) if row[7] > 0 else box[2] * box[3],
                }
                for k, (row, box) in enumerate(zip(gts.tolist(), gt_xywh, strict=True))
            ],
        }
        det_xywh = box_convert(dets[:, 1:5], "xyxy", "xywh").tolist()
        results = [
            {"image_id": int(row[0]), "category_id": int(row[6]) + 1, "bbox": box, "score": float(row[5])}
            for row, box in zip(dets.tolist(), det_xywh, strict=True)
        ]
        stats, self.summary_text = evaluate_coco(dataset, results, self.curves)
        return stats
