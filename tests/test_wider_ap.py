"""WIDER FACE's AP (mbtasks.metrics.wider): hand-computed cases, the official protocol's details against a
literal transcription of its loops, the official .mat files, and test/wider_ap_* through the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mbtasks.data.wider_face import WiderFaceDataModule
from mbtasks.errors import DataError
from mbtasks.metrics.coco import CocoMeanAP
from mbtasks.metrics.wider import (
    SETTINGS,
    normalise_scores,
    read_wider_mat,
    thresholds,
    voc_ap,
    wider_ap,
    wider_stats,
)
from tests.conftest import run_mode

A, B, C = [0, 0, 20, 20], [40, 40, 60, 60], [100, 0, 130, 30]


def gt(*boxes, ignore=()) -> tuple[np.ndarray, np.ndarray]:
    return np.array(boxes, float).reshape(-1, 4), np.array([k in ignore for k in range(len(boxes))])


def pred(*pairs) -> tuple[np.ndarray, np.ndarray]:
    return np.array([b for b, _ in pairs], float).reshape(-1, 4), np.array([s for _, s in pairs], float)


def test_perfect_detector_scores_one():
    truth = [gt(A, B), gt(C), gt()]
    assert wider_ap([pred((A, 0.9), (B, 0.4)), pred((C, 0.7)), pred()], truth).ap == pytest.approx(1.0)
    # the face nothing found caps recall at 2/3 (the sentinel (1, 0) adds nothing)
    assert wider_ap([pred((A, 0.9), (B, 0.4)), pred(), pred()], truth).ap == pytest.approx(2 / 3)


def test_a_detection_on_an_ignored_face_changes_nothing():
    truth = [gt(A, B, ignore=(1,)), gt(C)]
    base = wider_ap([pred((A, 0.9)), pred((C, 0.3), ([200, 0, 220, 20], 0.6))], truth)
    # a box on the ignored face, scored between the others (so the normalisation's min and max stay)
    more = wider_ap([pred((A, 0.9), (B, 0.8)), pred((C, 0.3), ([200, 0, 220, 20], 0.6))], truth)
    assert base.faces == more.faces == 2  # ignored faces are not in the recall's denominator
    np.testing.assert_array_equal(more.precision, base.precision)
    np.testing.assert_array_equal(more.recall, base.recall)
    assert more.ap == base.ap == pytest.approx(1 / 2 + 1 / 2 * 2 / 3)
    # the same box where the face counts: a hit
    assert wider_ap(
        [pred((A, 0.9), (B, 0.8)), pred((C, 0.3), ([200, 0, 220, 20], 0.6))], [gt(A, B), gt(C)]
    ).ap == pytest.approx(2 / 3 + 1 / 3 * 3 / 4)


def test_a_duplicate_is_a_false_alarm_even_over_an_unrecalled_face():
    truth = [gt(A, B)]
    assert wider_ap([pred((A, 0.9), (B, 0.7))], truth).ap == pytest.approx(1.0)
    # scores normalise to 1, 0.5, 0: (P, R) = (1, 1/2), (1/2, 1/2), (2/3, 1) -> 1/2 * 1 + 1/2 * 2/3
    assert wider_ap([pred((A, 0.9), (A, 0.8), (B, 0.7))], truth).ap == pytest.approx(5 / 6)
    # a box whose best face is A (recalled) stays a false alarm although it also covers B at IoU >= 0.5;
    # pycocotools would give it to B
    two = [0, 0, 20, 20], [2, 0, 22, 20]
    r = wider_ap([pred((two[0], 0.9), ([1, 0, 21, 20], 0.5))], [gt(*two)])
    assert r.recall[-1] == pytest.approx(0.5) and r.precision[-1] == pytest.approx(0.5)


def test_min_max_normalisation_is_over_the_whole_set():
    truth = [gt(A), gt(B)]
    preds = [pred((A, 0.9), ([200, 200, 220, 220], 0.6)), pred((B, 0.3))]
    r = wider_ap(preds, truth)
    # one ranking across images: hit 1.0, false alarm 0.5, hit 0.0 -> (1, 1/2), (1/2, 1/2), (2/3, 1)
    assert r.ap == pytest.approx(5 / 6)
    # an affine change of every score (a logit-like scale) leaves the normalised scores, so AP, unchanged
    shifted = [(b, 4 * s - 7) for b, s in preds]
    assert wider_ap(shifted, truth).ap == pytest.approx(r.ap)
    assert [s.tolist() for s in normalise_scores([[1.0, 0.75], [0.5], []])] == [[1.0, 0.5], [0.0], []]
    # ranked across images: B scored above the false alarm makes it perfect
    assert wider_ap([pred((A, 0.9), ([200, 200, 220, 220], 0.6)), pred((B, 0.95))], truth).ap == pytest.approx(1.0)
    # one score for all: every prediction passes every threshold (the original divides 0 by 0)
    assert wider_ap([pred((A, 0.5)), pred((B, 0.5))], truth).ap == pytest.approx(1.0)


def test_pr_curve_by_hand():
    """Scores already in [0, 1] with min 0 and max 1 stay as they are. Three faces (one never found):
    hit 1.0, false alarm 0.6, hit 0.3, false alarm 0.0."""
    preds = [pred((A, 1.0), (B, 0.3)), pred(([200, 0, 220, 20], 0.6), ([0, 100, 20, 120], 0.0))]
    truth = [gt(A, B), gt(C, [300, 300, 320, 320])]
    r = wider_ap(preds, truth)
    t = thresholds()
    assert t[0] == pytest.approx(0.999) and t[-1] == 0 and len(t) == 1000 and r.faces == 4
    # thresholds away from the scores (a score equal to a threshold passes it)
    expect = {
        0.999: (1, 1 / 4),
        0.65: (1, 1 / 4),
        0.55: (1 / 2, 1 / 4),
        0.35: (1 / 2, 1 / 4),
        0.25: (2 / 3, 2 / 4),
        0.05: (2 / 3, 2 / 4),
        0.0: (2 / 4, 2 / 4),
    }
    for cut, (p, rec) in expect.items():
        k = int(np.argmin(abs(t - cut)))
        assert (r.precision[k], r.recall[k]) == pytest.approx((p, rec)), cut
    # envelope: precision 1 up to recall 1/4, then 2/3 up to 1/2 -> 1/4 + 1/4 * 2/3
    assert r.ap == pytest.approx(1 / 4 + 1 / 6)
    assert voc_ap(np.array([0.25, 0.25, 0.5, 0.5]), np.array([1.0, 0.5, 2 / 3, 0.5])) == pytest.approx(1 / 4 + 1 / 6)
    # an image with predictions but no face is left out of the matching: its boxes are no false alarms
    assert wider_ap(preds + [pred((A, 0.8))], truth + [gt()]).ap == pytest.approx(r.ap)


# ---- the protocol as eval_tools writes it, loop for loop (image_evaluation.m / image_pr_info.m / VOCap)


def official_ap(preds, truth, keep, iou_thresh=0.5, thresh_num=1000):
    """A literal transcription of wider_eval.m's loops, predictions sorted as read_pred.m does."""
    all_scores = np.concatenate([s for _, s in preds if len(s)])
    low, high = all_scores.min(), all_scores.max()
    pr_curve, count_face = np.zeros((thresh_num, 2)), 0
    for (boxes, scores), (gt_boxes, _), kept in zip(preds, truth, keep, strict=True):
        count_face += int(kept.sum())
        if len(gt_boxes) == 0 or len(boxes) == 0:
            continue
        order = np.argsort(-scores, kind="stable")
        boxes, scores = boxes[order], (scores[order] - low) / (high - low)
        pred_recall, recall_list, proposal_list = np.zeros(len(boxes)), np.zeros(len(gt_boxes)), np.ones(len(boxes))
        for h in range(len(boxes)):
            o = []
            for g in gt_boxes:
                w = min(g[2], boxes[h, 2]) - max(g[0], boxes[h, 0]) + 1
                hh = min(g[3], boxes[h, 3]) - max(g[1], boxes[h, 1]) + 1
                inter = w * hh
                union = (
                    (g[2] - g[0] + 1) * (g[3] - g[1] + 1)
                    + (boxes[h, 2] - boxes[h, 0] + 1) * (boxes[h, 3] - boxes[h, 1] + 1)
                    - inter
                )
                o.append(0.0 if w <= 0 or hh <= 0 else inter / union)
            idx = int(np.argmax(o))
            if o[idx] >= iou_thresh:
                if not kept[idx]:
                    recall_list[idx] = -1
                    proposal_list[h] = -1
                elif recall_list[idx] == 0:
                    recall_list[idx] = 1
            pred_recall[h] = np.sum(recall_list == 1)
        for t in range(thresh_num):
            r_index = np.where(scores >= 1 - (t + 1) / thresh_num)[0]
            if len(r_index):
                r_index = r_index[-1]
                pr_curve[t] += [np.sum(proposal_list[: r_index + 1] == 1), pred_recall[r_index]]
    with np.errstate(invalid="ignore", divide="ignore"):
        prec, rec = pr_curve[:, 1] / pr_curve[:, 0], pr_curve[:, 1] / count_face
    mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = np.fmax(mpre[i], mpre[i + 1])  # MATLAB's max skips NaN
    i = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def random_set(seed: int, images: int = 25):
    rng = np.random.default_rng(seed)
    preds, truth, keep = [], [], []
    for _ in range(images):
        m = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (m, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(4, 60, (m, 2))], axis=1)
        ignore = rng.random(m) < 0.25
        truth.append((boxes, ignore))
        keep.append(~ignore & (rng.random(m) < 0.8))  # a setting's list: a subset of the valid faces
        hits = boxes[rng.random(m) < 0.7]
        jitter = hits + rng.normal(0, 4, hits.shape)  # some fall under IoU 0.5
        dup = jitter[: int(rng.integers(0, len(jitter) + 1))]
        dup = dup + rng.normal(0, 2, dup.shape)
        xy = rng.uniform(0, 200, (int(rng.integers(0, 4)), 2))
        noise = np.concatenate([xy, xy + rng.uniform(4, 60, xy.shape)], axis=1)
        b = np.concatenate([jitter, dup, noise])
        preds.append((b, rng.random(len(b)).round(3)))  # rounded: ties in score
    return preds, truth, keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_literal_transcription_of_the_official_loops(seed):
    preds, truth, keep = random_set(seed)
    mine = wider_ap(preds, truth, keep)
    assert mine.ap == pytest.approx(official_ap(preds, truth, keep), abs=1e-12)
    assert 0 < mine.ap < 1 and mine.faces == sum(int(k.sum()) for k in keep)


# ---- from the detection task's rows (CocoMeanAP), as validation and test compute it


def coco_rows(preds, truth, labels=None):
    """Feed per-image predictions / ground truth through CocoMeanAP as the task does; its rows and stats."""
    metric = CocoMeanAP()
    for k, ((boxes, scores), (g, ignore)) in enumerate(zip(preds, truth, strict=True)):
        n = len(scores)
        lab = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels[k])
        metric.update(
            [
                {
                    "boxes": torch.as_tensor(boxes).reshape(-1, 4).float(),
                    "scores": torch.as_tensor(scores).float(),
                    "labels": lab,
                }
            ],
            [
                {
                    "image_id": k + 1,
                    "orig_size": (400, 400),
                    "gt_boxes": torch.as_tensor(g).reshape(-1, 4).float(),
                    "gt_labels": torch.zeros(len(g), dtype=torch.long),
                    "gt_iscrowd": torch.as_tensor(ignore, dtype=torch.long),
                    "gt_area": torch.zeros(len(g)),
                }
            ],
        )
    stats = metric.compute()
    return [r.numpy() for r in metric.rows], stats


def test_ignored_face_discard_and_the_difference_from_coco():
    """The protocol's details through the task's own rows, beside pycocotools' AP@0.5 on the same detections."""
    truth = [gt(A, B, ignore=(1,)), gt(C), gt()]
    hits = [pred((A, 0.9)), pred((C, 0.8)), pred()]
    rows, stats = coco_rows(hits, truth)
    assert wider_stats(*rows, label=0) == {"wider_ap_all": pytest.approx(1.0)}
    assert stats["map_50"] == pytest.approx(1.0)
    # a top-scoring box on the ignored face: discarded by both
    rows, stats = coco_rows([pred((B, 0.95), (A, 0.9)), pred((C, 0.8)), pred()], truth)
    assert wider_stats(*rows, label=0)["wider_ap_all"] == pytest.approx(1.0) and stats["map_50"] == pytest.approx(1.0)
    # a top-scoring box on a face-less image: a false alarm for COCO, left out by WIDER
    rows, stats = coco_rows([pred((A, 0.9)), pred((C, 0.8)), pred((A, 0.95))], truth)
    assert wider_stats(*rows, label=0)["wider_ap_all"] == pytest.approx(1.0)
    assert stats["map_50"] < 0.9
    # two overlapping faces: the second box's best face is the one already recalled, so WIDER counts it a false
    # alarm; pycocotools gives it to the other face
    two = [0, 0, 20, 20], [2, 0, 22, 20]
    rows, stats = coco_rows([pred((two[0], 0.9), ([1, 0, 21, 20], 0.5))], [gt(*two)])
    assert wider_stats(*rows, label=0)["wider_ap_all"] == pytest.approx(0.5) and stats["map_50"] == pytest.approx(1.0)
    # another class's boxes are not the face class's
    rows, _ = coco_rows([pred((A, 0.9), (C, 0.99)), pred((C, 0.8)), pred()], truth, labels=[[0, 1], [0], []])
    assert wider_stats(*rows, label=0)["wider_ap_all"] == pytest.approx(1.0)


def test_ranks_gathered_rows_give_one_process_numbers():
    """Under DDP, CocoMeanAP's compute() cats every rank's rows (one image repeated by the sampler's padding);
    the WIDER AP of those rows is the one process's."""
    preds, truth, _ = random_set(4, images=7)

    def update(metric, ids):
        for k in ids:
            (boxes, scores), (g, ignore) = preds[k], truth[k]
            metric.update(
                [
                    {
                        "boxes": torch.as_tensor(boxes).float(),
                        "scores": torch.as_tensor(scores).float(),
                        "labels": torch.zeros(len(scores), dtype=torch.long),
                    }
                ],
                [
                    {
                        "image_id": k + 1,
                        "orig_size": (400, 400),
                        "gt_boxes": torch.as_tensor(g).float(),
                        "gt_labels": torch.zeros(len(g), dtype=torch.long),
                        "gt_iscrowd": torch.as_tensor(ignore, dtype=torch.long),
                        "gt_area": torch.zeros(len(g)),
                    }
                ],
            )

    whole = CocoMeanAP()
    update(whole, range(7))
    whole.compute()
    expected = wider_stats(*[r.numpy() for r in whole.rows], label=0)
    ranks = [CocoMeanAP(), CocoMeanAP()]
    update(ranks[0], [0, 2, 4, 6])
    update(ranks[1], [1, 3, 5, 0])  # the padding repeats image 0
    gathered = CocoMeanAP()
    for name in ("images", "dets", "gts"):  # what dist_reduce_fx="cat" leaves after the all-gather
        setattr(gathered, name, torch.cat([torch.cat(getattr(r, name)) for r in ranks]))
    gathered._update_count = 1
    gathered.compute()
    assert wider_stats(*[r.numpy() for r in gathered.rows], label=0) == pytest.approx(expected)
    assert 0 < expected["wider_ap_all"] < 1


# ---- the official .mat files (eval_tools' ground_truth/), written with scipy in their cell layout


def cells(items) -> np.ndarray:
    out = np.empty((len(items), 1), dtype=object)
    for k, v in enumerate(items):
        out[k, 0] = v
    return out


def write_mats(folder: Path, events: dict[str, dict[str, list]], lists: dict[str, dict[str, list]]) -> Path:
    """``events``: event -> image name -> xywh faces; ``lists``: setting -> image name -> 1-based face indices."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    names = list(events)
    savemat(
        folder / "wider_face_val.mat",
        {
            "event_list": cells(names),
            "file_list": cells([cells(list(events[e])) for e in names]),
            "face_bbx_list": cells(
                [cells([np.array(b, float).reshape(-1, 4) for b in events[e].values()]) for e in names]
            ),
        },
    )
    for setting in SETTINGS:
        savemat(
            folder / f"wider_{setting}_val.mat",
            {
                "gt_list": cells(
                    [
                        cells([np.array(lists[setting].get(n, []), float).reshape(-1, 1) for n in events[e]])
                        for e in names
                    ]
                )
            },
        )
    return folder


def test_official_settings_from_the_mat_files(tmp_path):
    pytest.importorskip("scipy")
    # faces in x y w h; easy counts the big one, medium both, hard all three
    events = {
        "0--Parade": {"0_Parade_a": [[0, 0, 20, 20], [40, 40, 20, 20], [100, 0, 8, 8]]},
        "1--Handshaking": {"1_b": [[10, 10, 30, 30]]},
    }
    lists = {
        "easy": {"0_Parade_a": [1], "1_b": [1]},
        "medium": {"0_Parade_a": [1, 2], "1_b": [1]},
        "hard": {"0_Parade_a": [1, 2, 3], "1_b": [1]},
    }
    official = read_wider_mat(write_mats(tmp_path / "gt", events, lists))
    np.testing.assert_array_equal(official.boxes[("0--Parade", "0_Parade_a")][1], [40, 40, 60, 60])
    assert official.counted["medium"][("0--Parade", "0_Parade_a")].tolist() == [True, True, False]
    preds = [pred(([0, 0, 20, 20], 0.9), ([100, 0, 108, 8], 0.8)), pred(([10, 10, 40, 40], 0.7))]
    # our records of the same images (the tiny face an ignore region, as the reader marks it)
    truth = [gt([0, 0, 20, 20], [40, 40, 60, 60], [100, 0, 108, 8], ignore=(2,)), gt([10, 10, 40, 40])]
    rows, _ = coco_rows(preds, truth)
    names = {1: ("0--Parade", "0_Parade_a"), 2: ("1--Handshaking", "1_b")}
    out = wider_stats(*rows, label=0, official=official, names=names)
    # easy: the hit on the tiny face is discarded (not in the list): 2 of 2 -> 1
    assert out["wider_ap_easy"] == pytest.approx(1.0)
    # medium: the 40-px face is missed: recall 2/3 at precision 1
    assert out["wider_ap_medium"] == pytest.approx(2 / 3)
    # hard: the tiny face counts and is found: 3 of 4
    assert out["wider_ap_hard"] == pytest.approx(3 / 4)
    assert out["wider_ap_all"] == pytest.approx(2 / 3)  # our ignore flags: tiny face ignored, 2 of 3
    # images of the split that the .mat does not list: no official numbers
    assert set(wider_stats(*rows, label=0, official=official, names={1: ("x", "y"), 2: ("x", "z")})) == {"wider_ap_all"}
    with pytest.raises(DataError, match=r"wider_hard_val.mat'\] not found"):
        (tmp_path / "gt" / "wider_hard_val.mat").unlink()
        read_wider_mat(tmp_path / "gt")
    from scipy.io import savemat

    savemat(tmp_path / "gt" / "wider_hard_val.mat", {"something_else": np.zeros(3)})
    with pytest.raises(DataError, match="not WIDER FACE's evaluation .mat layout .KeyError: 'gt_list'"):
        read_wider_mat(tmp_path / "gt")


# ---- through the CLI: a 2-step detection run on a generated dlib imglab set, then mode=test


def faces_xml(root: Path) -> Path:
    """Six training photos and three test photos, 64 px, with light squares as faces and one ignore box."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("training", 6), ("testing", 3)):
        entries = []
        for k in range(n):
            pixels = np.full((64, 64, 3), 40, np.uint8)
            boxes = []
            for j in range(2):
                x, y = int(rng.integers(0, 40)), int(rng.integers(0, 40))
                pixels[y : y + 20, x : x + 20] = 220
                ignore = " ignore='1'" if (k, j) == (0, 1) else ""
                boxes.append(f"<box top='{y}' left='{x}' width='20' height='20'{ignore}/>")
            Image.fromarray(pixels).save(root / f"{split}_{k}.jpg")
            entries.append(f"<image file='{split}_{k}.jpg'>{''.join(boxes)}</image>")
        (root / f"{split}.xml").write_text(f"<dataset><images>{''.join(entries)}</images></dataset>")
    return root


# WIDER FACE: x y w h per face (the 6-px one is an ignore region for the reader, as is the invalid one)
WIDER_FACES = {
    "0--Parade/0_Parade_a": [[4, 4, 20, 20, 0], [36, 30, 22, 22, 0], [50, 2, 6, 6, 0]],
    "0--Parade/0_Parade_b": [[10, 12, 24, 24, 0], [40, 40, 16, 16, 1]],
    "1--Handshaking/1_c": [[20, 20, 30, 30, 0]],
}


def wider_set(root: Path) -> Path:
    """WIDER_{train,val}/images + wider_face_split txts (the same 3 photos in both) + eval_tools' .mat files."""
    lines = []
    for name, faces in WIDER_FACES.items():
        pixels = np.full((64, 64, 3), 40, np.uint8)
        for x, y, w, h, _ in faces:
            pixels[y : y + h, x : x + w] = 220
        for split in ("train", "val"):
            (root / f"WIDER_{split}" / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"WIDER_{split}" / "images" / f"{name}.jpg")
        lines += [f"{name}.jpg", str(len(faces))] + [f"{x} {y} {w} {h} 0 0 0 {bad} 0 0" for x, y, w, h, bad in faces]
    (root / "wider_face_split").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    events: dict[str, dict[str, list]] = {}
    for name, faces in WIDER_FACES.items():
        event, image_name = name.split("/")
        events.setdefault(event, {})[image_name] = [f[:4] for f in faces]
    # easy: the big faces; medium: also the 16-px one; hard: also the 6-px one (never the invalid one)
    lists = {
        "easy": {"0_Parade_a": [1, 2], "0_Parade_b": [1], "1_c": [1]},
        "medium": {"0_Parade_a": [1, 2], "0_Parade_b": [1], "1_c": [1]},
        "hard": {"0_Parade_a": [1, 2, 3], "0_Parade_b": [1], "1_c": [1]},
    }
    write_mats(root / "eval_tools" / "ground_truth", events, lists)
    return root


def test_wider_data_module_reads_the_mat_files_at_setup(tmp_path):
    pytest.importorskip("scipy")
    root = wider_set(tmp_path)
    dm = WiderFaceDataModule(str(root), wider_eval_dir="eval_tools/ground_truth")
    dm.setup("fit")
    assert dm.eval_wider and len(dm.wider_ground_truth.boxes) == 3
    assert set(dm.wider_keys("val").values()) == set(dm.wider_ground_truth.boxes)
    # a wrong folder stops at setup, before any training
    with pytest.raises(
        DataError, match=r"data.wider_eval_dir=nowhere: .*nowhere: WIDER FACE evaluation files \['wider_face_val"
    ):
        WiderFaceDataModule(str(root), wider_eval_dir="nowhere").setup("fit")
    # eval_wider off: the folder is not read
    assert WiderFaceDataModule(str(root), eval_wider=False, wider_eval_dir="nowhere").info["class_names"] == ["face"]


def test_cli_test_mode_writes_wider_ap_beside_coco_map(tmp_path):
    root = faces_xml(tmp_path / "faces")
    common = [
        "task=detection",
        "data=dlib_xml",
        f"data.root={root}",
        "data.val_xml=testing.xml",
        "data.image_size=64",
        "data.batch_size=3",
        "backbone.width=0.25",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "task.log_images=0",
    ]
    trained = run_mode(common, tmp_path / "train")
    assert "val/wider_ap_all" in trained and "test/wider_ap_all" in trained
    tested = run_mode(["mode=test", f"ckpt_path={tmp_path / 'train' / 'checkpoints' / 'best.ckpt'}"], tmp_path / "test")
    saved = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert 0 <= saved["test/wider_ap_all"] <= 1 and "test/map_50" in saved
    assert tested["test/wider_ap_all"] == pytest.approx(trained["test/wider_ap_all"], abs=1e-6)
    assert not any(k.startswith("test/wider_ap_") and k != "test/wider_ap_all" for k in saved)  # no .mat: no easy/...
    # the data config decides: the same checkpoint on the same photos, eval_wider off
    off = run_mode(
        [
            "mode=test",
            f"ckpt_path={tmp_path / 'train' / 'checkpoints' / 'best.ckpt'}",
            "task=detection",
            "data=dlib_xml",
            f"data.root={root}",
            "data.val_xml=testing.xml",
            "data.image_size=64",
            "data.eval_wider=false",
        ],
        tmp_path / "test-off",
    )
    assert "test/map_50" in off and not any("wider" in k for k in off)
    if importlib.util.find_spec("scipy") is None:
        return
    # the same face detector on a WIDER FACE layout with eval_tools' .mat files: the official settings too
    wider_root = wider_set(tmp_path / "wider")
    official = run_mode(
        [
            "mode=test",
            f"ckpt_path={tmp_path / 'train' / 'checkpoints' / 'best.ckpt'}",
            "task=detection",
            "data=wider_face",
            f"data.root={wider_root}",
            "data.image_size=64",
            "data.wider_eval_dir=eval_tools/ground_truth",
        ],
        tmp_path / "test-wider",
    )
    saved = json.loads((tmp_path / "test-wider" / "metrics.json").read_text())
    for key in ("all", "easy", "medium", "hard"):
        assert (
            0 <= saved[f"test/wider_ap_{key}"] <= 1
            and official[f"test/wider_ap_{key}"] == saved[f"test/wider_ap_{key}"]
        )
