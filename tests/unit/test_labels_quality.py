"""LayerLabels round-trips; label quality equals scipy's Mann-Whitney and sklearn's AUC."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from cdissect_labeler.labels import LayerLabels
from cdissect_labeler.quality import label_quality, quality_positive_count
from cdissect_labeler.streaming import StreamingLabeler


def _labels(K: int = 4) -> LayerLabels:
    rng = np.random.default_rng(0)
    return LayerLabels(concept_ids=rng.integers(0, 50, (K, 5)), scores=rng.random((K, 5)),
                       top_images=rng.integers(0, 100, (K, 10)), dead=np.array([False, True, False, False]),
                       quality_auc=rng.random(K), quality_p=rng.random(K))


def test_arrays_round_trip_with_fixed_dtypes() -> None:
    labels = _labels()
    arrays = labels.to_arrays()
    assert {k: v.dtype for k, v in arrays.items()} == {
        "concept_ids": np.int64, "scores": np.float32, "top_images": np.int64, "dead": np.bool_,
        "quality_auc": np.float32, "quality_p": np.float32, "similarity_rank": np.int32,
        "correlation": np.float32, "correlation_low": np.float32, "correlation_high": np.float32,
        "auprc": np.float32, "auprc_base": np.float32, "heldout_constant": np.bool_}
    back = LayerLabels.from_arrays(arrays)
    for key, value in arrays.items():
        assert np.array_equal(getattr(back, key), value)
    assert back.words([f"w{i}" for i in range(50)])[0][0] == f"w{labels.concept_ids[0, 0]}"


def test_invalid_labels_are_refused() -> None:
    arrays = _labels().to_arrays()
    arrays["scores"] = arrays["scores"].copy()
    arrays["scores"][1, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        LayerLabels.from_arrays(arrays)
    arrays = _labels().to_arrays()
    del arrays["dead"]
    with pytest.raises(ValueError, match="lack dead"):
        LayerLabels.from_arrays(arrays)
    arrays = _labels().to_arrays()
    arrays["top_images"] = arrays["top_images"][:3]
    with pytest.raises(ValueError, match="top_images must be"):
        LayerLabels.from_arrays(arrays)


def test_quality_equals_scipy_and_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    n, n_pos = 300, 20
    scores = np.round(rng.normal(size=(n, 3)), 1).astype(np.float32)      # rounding makes ties
    positives = np.stack([rng.choice(n, n_pos, replace=False) for _ in range(5)])
    column = np.array([0, 1, 2, 1, 0])
    scores[positives[0], 0] += 2.0                                      # unit 0 separates well
    auc, pval = label_quality(scores, column, positives)
    for k in range(5):
        y = np.zeros(n, dtype=bool)
        y[positives[k]] = True
        x = scores[:, column[k]].astype(np.float64)
        assert auc[k] == pytest.approx(roc_auc_score(y, x), abs=1e-12)
        ref = mannwhitneyu(x[y], x[~y], alternative="greater", method="asymptotic")
        assert pval[k] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    assert auc[0] > 0.8 and pval[0] < 1e-6


def test_quality_takes_a_count_of_positives_per_unit() -> None:
    rng = np.random.default_rng(4)
    n = 200
    scores = np.round(rng.normal(size=(n, 2)), 1)
    positives = np.stack([rng.choice(n, 15, replace=False) for _ in range(3)])
    counts = np.array([15, 4, 0])                     # unit 1: its first 4 rows only; unit 2: none
    auc, pval = label_quality(scores, np.array([0, 1, 0]), positives, counts)
    for k in (0, 1):
        y = np.zeros(n, dtype=bool)
        y[positives[k, :counts[k]]] = True
        x = scores[:, [0, 1, 0][k]]
        assert auc[k] == pytest.approx(roc_auc_score(y, x), abs=1e-12)
        assert pval[k] == pytest.approx(mannwhitneyu(x[y], x[~y], alternative="greater", method="asymptotic").pvalue,
                                        rel=1e-9)
    assert (auc[2], pval[2]) == (0.5, 1.0)


def test_degenerate_cases_are_defined() -> None:
    auc, pval = label_quality(np.ones((10, 1)), np.array([0]), np.array([[1, 2]]))
    assert auc[0] == 0.5 and pval[0] == 1.0
    auc, pval = label_quality(np.random.rand(3, 1), np.array([0]), np.array([[0, 1, 2]]))
    assert auc[0] == 0.5 and pval[0] == 1.0


def test_positive_set_size_per_function() -> None:
    assert quality_positive_count("soft_wpmi", {"top_k": 100}, 20000) == 100
    assert quality_positive_count("wpmi", {"top_k": 28}, 20) == 20
    assert quality_positive_count("cos_similarity", {}, 20000) == 1000
    assert quality_positive_count("rank_reorder", {"top_fraction": 0.1}, 500) == 50
    assert quality_positive_count("cos_similarity_cubed", {}, 10) == 1


def test_streaming_labeler_reports_quality_of_its_labels() -> None:
    rng = np.random.default_rng(7)
    n, d, c = 400, 12, 25
    I = rng.standard_normal((n, d)).astype(np.float32)
    T = rng.standard_normal((c, d)).astype(np.float32)
    In = I / np.linalg.norm(I, axis=1, keepdims=True)
    Tn = T / np.linalg.norm(T, axis=1, keepdims=True)
    P = In @ Tn.T
    A = np.stack([np.maximum(P[:, 3], 0), rng.random(n), np.zeros(n)], axis=1).astype(np.float32)
    labeler = StreamingLabeler("wpmi", {}, T)
    for s in range(0, n, 64):
        labeler.add_shard(I[s:s + 64], A[s:s + 64])
    labels = labeler.finish()
    for k in range(2):
        y = np.zeros(n, dtype=bool)
        y[np.argsort(-A[:, k], kind="stable")[:28]] = True
        x = P[:, labels.concept_ids[k, 0]]
        assert labels.quality_auc[k] == pytest.approx(roc_auc_score(y, x), abs=1e-6)
    assert labels.concept_ids[0, 0] == 3 and labels.quality_auc[0] > 0.95 and labels.quality_p[0] < 1e-10
    assert labels.dead.tolist() == [False, False, True]
    assert labels.quality_auc[2] == 0.5 and labels.quality_p[2] == 1.0
