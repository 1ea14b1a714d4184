"""Simulation scores and the held-out split: correlation from streamed moments, AUPRC with ties,
the Fisher interval, the re-ranking rule, defined scores for constant units, and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cdissect_common import evaluation
from cdissect_labeler.heldout import HeldOutRows
from cdissect_labeler.simulation import (SplitMoments, average_precision, fisher_interval, heldout_scores,
                                         rerank)


def _data(n: int = 1500, K: int = 12, d: int = 16, C: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    I = rng.normal(size=(n, d)).astype(np.float32)
    I /= np.linalg.norm(I, axis=1, keepdims=True)
    T = rng.normal(size=(C, d)).astype(np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    # ReLU units with a large mean next to a small spread: the case that needs the shifted sums
    A = np.maximum(I @ rng.normal(size=(d, K)).astype(np.float32) + 50.0, 0).astype(np.float32)
    return I, T, A


def test_moments_give_the_exact_pearson_correlation_for_any_concept_and_shard_size() -> None:
    I, T, A = _data()
    A[:, 3] = 7.0                                   # constant unit: r = 0, never NaN
    ids = np.random.default_rng(1).integers(0, T.shape[0], size=(A.shape[1], 6))
    P = I.astype(np.float64) @ T.T.astype(np.float64)
    expected = np.zeros(ids.shape)
    for k in range(A.shape[1]):
        for j in range(ids.shape[1]):
            if A[:, k].std() > 0:
                expected[k, j] = np.corrcoef(A[:, k].astype(np.float64), P[:, ids[k, j]])[0, 1]
    for shard in (1, 97, 1500):
        moments = SplitMoments(torch.device("cpu"))
        for s in range(0, len(I), shard):
            moments.add(torch.from_numpy(A[s:s + shard]), torch.from_numpy(I[s:s + shard]))
        got = moments.correlations(torch.from_numpy(T), torch.from_numpy(ids)).numpy()
        assert np.abs(got - expected).max() < 1e-6, shard
        assert np.all(got[3] == 0.0)


def test_average_precision_matches_the_threshold_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        scores = np.round(rng.random(200), 1 if trial % 2 else 6)
        positive = rng.random(200) < 0.1
        positive[0] = True
        # by definition: Σ over distinct thresholds of Δrecall × precision
        expected, prev_recall = 0.0, 0.0
        for t in np.unique(scores)[::-1]:
            chosen = scores >= t
            recall = positive[chosen].sum() / positive.sum()
            expected += (recall - prev_recall) * positive[chosen].mean()
            prev_recall = recall
        assert average_precision(scores, positive) == pytest.approx(expected, abs=1e-12)
    assert average_precision(np.arange(5.0), np.array([0, 0, 0, 0, 1], bool)) == 1.0
    assert average_precision(np.ones(4), np.array([1, 0, 0, 0], bool)) == 0.25    # all tied: the base rate


def test_heldout_scores_define_constant_and_unlabelled_units_without_nan() -> None:
    I, T, A = _data(n=300, K=5)
    A[:, 1] = 0.0                                  # dead
    P = (I @ T.T)[:, :3]
    scores = heldout_scores(A, P, np.array([0, 1, 2, -1, 0]), n_positives=6)
    for name in ("correlation", "correlation_low", "correlation_high", "auprc", "auprc_base"):
        assert np.isfinite(getattr(scores, name)).all(), name
    assert scores.constant.tolist() == [False, True, False, False, False]
    for k in (1, 3):                               # constant, and a unit without a label
        assert scores.correlation[k] == 0.0 and scores.auprc[k] == pytest.approx(6 / 300)
        assert (scores.correlation_low[k], scores.correlation_high[k]) == (-1.0, 1.0)
    r = np.corrcoef(A[:, 0].astype(np.float64), P[:, 0].astype(np.float64))[0, 1]
    assert scores.correlation[0] == pytest.approx(r, abs=1e-9)
    assert scores.correlation_low[0] < r < scores.correlation_high[0]


def _sparse_units(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out acts [n, 3] (unit 0 active on 4 rows, unit 1 on 12, unit 2 dense) and label scores [n, 1]."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, 1)).astype(np.float32)
    acts = np.zeros((n, 3), dtype=np.float32)
    for k, active in enumerate((4, 12)):
        rows = rng.choice(n, active, replace=False)
        acts[rows, k] = 1.0 + np.abs(scores[rows, 0]) + rng.random(active).astype(np.float32)
    acts[:, 2] = scores[:, 0] + rng.normal(size=n).astype(np.float32)
    return acts, scores


def test_auprc_of_a_sparse_unit_does_not_depend_on_the_order_of_the_images() -> None:
    # 20 positives asked, unit 0 active on 4 images: the 16 others tied at its minimum are no positives
    # (they used to be filled in by index, so permuting the images changed the AUPRC at fixed r).
    acts, scores = _sparse_units()
    column = np.zeros(3, dtype=np.int64)
    first = heldout_scores(acts, scores, column, n_positives=20)
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(len(acts))
        again = heldout_scores(acts[perm], scores[perm], column, n_positives=20)
        assert np.allclose(again.correlation, first.correlation, atol=1e-12)
        assert again.auprc.tolist() == pytest.approx(first.auprc.tolist(), abs=1e-12), seed
    assert first.auprc_base.tolist() == pytest.approx([4 / 600, 12 / 600, 20 / 600])
    positive = acts[:, 0] > 0
    assert first.auprc[0] == pytest.approx(average_precision(scores[:, 0], positive))


def test_heldout_auc_of_a_sparse_unit_does_not_depend_on_the_order_of_the_images() -> None:
    # The same held-out rows in other orders (routed by the split into the held-out places of the shard).
    total, d = 1000, 8
    mask = evaluation.heldout_mask(0, total, 0.5, 3)
    n_held = int(mask.sum())
    acts, _ = _sparse_units(n=n_held)
    rng = np.random.default_rng(1)
    text = torch.from_numpy(rng.normal(size=(1, d)).astype(np.float32))
    text = text / text.norm(dim=1, keepdim=True)
    held = rng.normal(size=(n_held, d)).astype(np.float32)
    held /= np.linalg.norm(held, axis=1, keepdims=True)
    results = []
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(n_held)
        images = rng.normal(size=(total, d)).astype(np.float32)
        units = rng.random((total, 3)).astype(np.float32)
        images[mask], units[mask] = held[perm], acts[perm]
        rows = HeldOutRows(0.5, 3, torch.device("cpu"), "float32")
        rows.add_shard(torch.from_numpy(images), torch.from_numpy(units))
        scores_, auc, pval = rows.score(text, np.zeros(3, dtype=np.int64), 10, with_auc=True)
        results.append((scores_.auprc, auc, pval))
    for auprc, auc, pval in results[1:]:
        assert auprc == pytest.approx(results[0][0], abs=1e-9)
        assert auc == pytest.approx(results[0][1], abs=1e-12) and pval == pytest.approx(results[0][2], rel=1e-9)


def test_fisher_interval_narrows_with_more_images_and_stays_in_range() -> None:
    low_small, high_small = fisher_interval(np.array([0.3]), 30)
    low_big, high_big = fisher_interval(np.array([0.3]), 3000)
    assert low_small < low_big < 0.3 < high_big < high_small
    half = 1.959963984540054 / math.sqrt(27)
    assert low_small[0] == pytest.approx(math.tanh(math.atanh(0.3) - half))
    assert fisher_interval(np.array([0.5]), 3) == (pytest.approx([-1.0]), pytest.approx([1.0]))
    low, high = fisher_interval(np.array([1.0, -1.0]), 100)
    assert np.all(np.isfinite(low)) and np.all(np.isfinite(high))


def test_rerank_trades_correlation_against_the_similarity_rank() -> None:
    corr = np.array([[0.50, 0.52, 0.60, 0.10],
                     [0.00, 0.00, 0.00, 0.00]])
    # penalty 0.05: 0.50, 0.47, 0.50, -0.05 → the top-1 stays (ties keep the similarity's order)
    assert rerank(corr, 0.05)[0].tolist() == [0, 2, 1, 3]
    assert rerank(corr, 0.0)[0].tolist() == [2, 1, 0, 3]          # pure correlation
    assert rerank(corr, 0.005)[1].tolist() == [0, 1, 2, 3]        # no information: the similarity's order


def test_heldout_split_is_a_fixed_function_of_index_fraction_and_seed() -> None:
    whole = evaluation.heldout_mask(0, 5000, 0.2, 7)
    pieces = np.concatenate([evaluation.heldout_mask(s, 333, 0.2, 7)[:max(0, min(333, 5000 - s))]
                             for s in range(0, 5000, 333)])
    assert np.array_equal(whole, pieces)                             # shard sizes do not matter
    assert evaluation.heldout_count(5000, 0.2, 7) == int(whole.sum())
    assert 0.17 < whole.mean() < 0.23
    assert not np.array_equal(whole, evaluation.heldout_mask(0, 5000, 0.2, 8))
    assert np.all(evaluation.heldout_mask(0, 5000, 0.1, 7) <= whole)   # nested: a smaller share is a subset


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.51, 1.0, float("nan")])
def test_eval_fraction_outside_the_range_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"eval fraction must be in \(0, 0.5\]"):
        evaluation.check_eval_fraction(fraction)


def test_a_heldout_split_under_twenty_images_is_refused_naming_the_fix() -> None:
    assert evaluation.check_heldout_split(200, 0.2, 0) >= evaluation.MIN_EVAL_IMAGES
    with pytest.raises(ValueError, match="at least 20.*--eval-fraction"):
        evaluation.check_heldout_split(60, 0.2, 0)


def test_candidate_count_and_positives() -> None:
    with pytest.raises(ValueError, match="at least 1 candidate"):
        evaluation.check_candidates(0)
    assert evaluation.positives_count(600, 0.005) == 3
    assert evaluation.positives_count(600, 0.005, 100 / 3000) == 20    # at least the function's top share
    assert evaluation.positives_count(20, 0.005) == 1
