"""Verification metrics (LFW protocol) on hand-made distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbtasks.metrics.verification import (
    best_threshold,
    evaluate_verification,
    far_key,
    pair_distances,
    tar_at_far,
)


def _separable(n_pairs: int = 2000, seed: int = 0):
    rng = np.random.default_rng(seed)
    same = np.arange(n_pairs) % 2 == 0
    d = np.where(same, rng.uniform(0.1, 0.9, n_pairs), rng.uniform(1.1, 3.5, n_pairs))
    return d, same


def test_perfect_separation_scores_one():
    d, same = _separable(2400)
    res = evaluate_verification(d, same, fars=(1e-3,))
    assert res.accuracy == 1.0
    assert res.accuracy_std == 0.0
    assert res.roc_auc == 1.0
    assert res.tar_at_far[1e-3] == 1.0
    assert 0.9 < res.threshold < 1.1  # halfway between the classes
    assert len(res.fold_accuracies) == 10
    assert res.num_same == res.num_different == 1200


def test_shuffled_labels_give_chance():
    d, same = _separable(4000, seed=1)
    shuffled = np.random.default_rng(2).permutation(same)
    res = evaluate_verification(d, shuffled)
    assert abs(res.accuracy - 0.5) < 0.05
    assert abs(res.roc_auc - 0.5) < 0.05


def test_tar_needs_enough_negatives_and_says_so():
    d, same = _separable(400)  # 200 different pairs: FAR 1e-3 needs 1000
    res = evaluate_verification(d, same, fars=(1e-3, 1e-4))
    assert res.tar_at_far == {1e-3: None, 1e-4: None}
    assert any("TAR@FAR=0.001 not measured: 200 different-identity pairs, needs >= 1000" in n for n in res.notes)
    assert tar_at_far(d, same, 1e-2) == 1.0  # 200 >= 100


def test_tar_at_far_counts_false_accepts():
    # 1000 negatives, one of them closer than every positive: at FAR <= 1e-3 one false
    # accept is allowed, so every positive is accepted.
    same = np.array([True] * 100 + [False] * 1000)
    d = np.concatenate([np.linspace(0.2, 0.8, 100), [0.1], np.linspace(1.5, 3.0, 999)])
    assert tar_at_far(d, same, 1e-3) == 1.0
    # two negatives below all positives: no threshold reaches FAR <= 1e-3 above TAR 0
    d2 = d.copy()
    d2[101] = 0.15
    assert tar_at_far(d2, same, 1e-3) == 0.0


def test_best_threshold_is_a_midpoint_and_handles_one_kind():
    thr, acc = best_threshold(np.array([0.2, 0.4, 1.0, 1.6]), np.array([True, True, False, False]))
    assert thr == pytest.approx(0.7) and acc == 1.0
    thr, acc = best_threshold(np.array([0.5, 0.7]), np.array([False, False]))
    assert thr < 0.5 and acc == 1.0
    thr, acc = best_threshold(np.array([0.5, 0.7]), np.array([True, True]))
    assert thr > 0.7 and acc == 1.0


def test_given_folds_pick_thresholds_on_the_other_folds():
    # fold 0 has its classes shifted: a threshold learnt on fold 1 misjudges fold 0.
    same = np.array([True, False] * 10)
    folds = np.repeat([0, 1], 10)
    d = np.where(same, 0.5, 1.5) + np.where(folds == 0, 1.2, 0.0)
    res = evaluate_verification(d, same, folds=folds, fars=())
    assert res.fold_accuracies[0] == 0.5  # every fold-0 pair is above the fold-1 threshold
    assert res.fold_accuracies[1] == 0.5  # and the fold-0 threshold accepts all of fold 1
    assert res.accuracy == 0.5


def test_pair_distances_are_squared_l2():
    emb = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    pairs = np.array([[0, 1], [2, 2], [3, 4]])
    d = pair_distances(emb, pairs)
    assert d[1] == 0.0
    assert d[0] == pytest.approx(float((emb[0] - emb[1]).pow(2).sum()), rel=1e-6)
    assert ((0 <= d) & (d <= 4)).all()


def test_far_key_names():
    assert far_key(1e-3) == "tar_at_far_1e-3"
    assert far_key(1e-4) == "tar_at_far_1e-4"
    assert far_key(5e-2) == "tar_at_far_5e-2"
