"""The streaming labeler's two selections and its held-out scores.

- similarity (the reference): labels exactly as before; the held-out scores are those of the
  dense computation on the held-out rows;
- simulation: the held-out rows never reach the selection (changing them changes no label), and
  the labels are the dense re-ranking of soft-WPMI's candidates on the selection split;
- dead units and units constant on the held-out rows get defined scores, never NaN;
- bad settings fail when the labeler is made, before any shard.
"""
from __future__ import annotations

import numpy as np
import pytest

from cdissect_common import evaluation
from cdissect_labeler import similarity
from cdissect_labeler.simulation import rerank
from cdissect_labeler.streaming import StreamingLabeler

N, K, D, C = 900, 12, 16, 40


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(N, D)).astype(np.float32)
    text = rng.normal(size=(C, D)).astype(np.float32)
    acts = np.maximum(images @ rng.normal(size=(D, K)).astype(np.float32) + 0.3, 0).astype(np.float32)
    return images, text, acts


def _label(images, text, acts, shard: int = 128, **kwargs):
    labeler = StreamingLabeler("soft_wpmi", {"top_k": 40}, text, num_images=len(images), **kwargs)
    for s in range(0, len(images), shard):
        labeler.add_shard(images[s:s + shard], acts[s:s + shard])
    return labeler, labeler.finish(top_concepts=5, top_images=10)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_similarity_selection_labels_as_the_reference_and_scores_the_heldout_rows() -> None:
    images, text, acts = _data()
    labeler, labels = _label(images, text, acts)
    P = (_normalised(images) @ _normalised(text).T).astype(np.float32)
    dense = similarity.soft_wpmi(P, acts, top_k=40)
    assert np.array_equal(labels.concept_ids[:, 0], dense.argmax(axis=1))
    assert np.array_equal(labels.similarity_rank, np.tile(np.arange(1, 6), (K, 1)))
    held = evaluation.heldout_mask(0, N, evaluation.EVAL_FRACTION, evaluation.EVAL_SEED)
    assert labeler.heldout_images == held.sum() > 0
    for k in range(K):
        expected = np.corrcoef(acts[held, k].astype(np.float64), P[held, labels.concept_ids[k, 0]])[0, 1]
        assert labels.correlation[k] == pytest.approx(expected, abs=1e-5)
    assert np.all(labels.correlation_low < labels.correlation) and np.all(labels.correlation < labels.correlation_high)
    assert np.all(labels.auprc_base == labels.auprc_base[0]) and 0 < labels.auprc_base[0] < 1


def test_simulation_selection_never_sees_the_heldout_rows() -> None:
    images, text, acts = _data()
    _, labels = _label(images, text, acts, select="simulation")
    held = evaluation.heldout_mask(0, N, evaluation.EVAL_FRACTION, evaluation.EVAL_SEED)
    scrambled_acts, scrambled_images = acts.copy(), images.copy()
    rng = np.random.default_rng(9)
    scrambled_acts[held] = rng.permutation(scrambled_acts[held]) * 3.0
    scrambled_images[held] = rng.normal(size=(int(held.sum()), D)).astype(np.float32)
    _, again = _label(scrambled_images, text, scrambled_acts, select="simulation")
    assert np.array_equal(labels.concept_ids, again.concept_ids)
    assert np.array_equal(labels.top_images, again.top_images)
    assert not np.allclose(labels.correlation, again.correlation)        # the scores do use them
    assert not np.isin(labels.top_images, np.flatnonzero(held)).any()    # top images: the selection split's


def test_simulation_selection_is_the_dense_reranking_on_the_selection_split() -> None:
    images, text, acts = _data(1)
    _, labels = _label(images, text, acts, select="simulation", candidates=8, rank_penalty=0.01)
    sel = ~evaluation.heldout_mask(0, N, evaluation.EVAL_FRACTION, evaluation.EVAL_SEED)
    P = (_normalised(images) @ _normalised(text).T)[sel]
    dense = similarity.soft_wpmi(P.astype(np.float32), acts[sel], top_k=40)
    candidates = np.argsort(-dense, axis=1, kind="stable")[:, :8]
    corr = np.array([[np.corrcoef(acts[sel, k].astype(np.float64), P[:, m])[0, 1] for m in row]
                     for k, row in enumerate(candidates)])
    order = rerank(corr, 0.01)
    expected = np.take_along_axis(candidates, order, axis=1)[:, :5]
    assert np.array_equal(labels.concept_ids, expected)
    # each concept's rank is its place in soft-WPMI's ranking (compared by value: near-ties may swap places)
    ranked = -np.sort(-dense, axis=1)
    np.testing.assert_allclose(np.take_along_axis(ranked, labels.similarity_rank - 1, axis=1),
                               np.take_along_axis(dense, labels.concept_ids, axis=1), rtol=1e-5, atol=1e-5)
    assert np.mean(labels.similarity_rank == order[:, :5] + 1) > 0.9
    # the similarity column keeps soft-WPMI's own value of each (re-ranked) concept
    np.testing.assert_allclose(labels.scores, np.take_along_axis(dense, expected, axis=1), rtol=1e-4, atol=1e-3)


def test_dead_and_heldout_constant_units_get_defined_scores() -> None:
    images, text, acts = _data(2)
    held = evaluation.heldout_mask(0, N, evaluation.EVAL_FRACTION, evaluation.EVAL_SEED)
    acts[:, 0] = 1.5                          # dead: constant everywhere
    acts[held, 1] = 0.25                      # constant on the held-out rows only
    for select in ("similarity", "simulation"):
        _, labels = _label(images, text, acts, select=select)
        for name in ("correlation", "correlation_low", "correlation_high", "auprc", "auprc_base", "scores"):
            assert np.isfinite(getattr(labels, name)).all(), (select, name)
        assert labels.dead.tolist()[:2] == [True, False], select
        assert labels.heldout_constant.tolist()[:3] == [True, True, False], select
        for k in (0, 1):
            assert labels.correlation[k] == 0.0 and labels.auprc[k] == labels.auprc_base[k]
            assert (labels.correlation_low[k], labels.correlation_high[k]) == (-1.0, 1.0)


@pytest.mark.parametrize("select", ["similarity", "simulation"])
def test_each_shard_is_checked_once_and_each_row_normalised_once(select: str, monkeypatch) -> None:
    from cdissect_labeler import heldout, intake, streaming

    calls = {"checked": 0, "normalised_rows": 0}

    def counting(module, name, key, rows):
        original = getattr(module, name)

        def wrapper(x, *args, **kwargs):
            calls[key] += int(x.shape[0]) if rows else 1
            return original(x, *args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    images, text, acts = _data()
    labeler = StreamingLabeler("soft_wpmi", {"top_k": 40}, text, num_images=N, select=select)
    for module in (intake, streaming):
        counting(module, "checked_tensor", "checked", False)
    for module in (intake, heldout, streaming):
        counting(module, "normalise_embeddings", "normalised_rows", True)
    shards = range(0, N, 128)
    for s in shards:
        labeler.add_shard(images[s:s + 128], acts[s:s + 128])
    assert calls == {"checked": 2 * len(shards), "normalised_rows": N}
    assert labeler.heldout_images == evaluation.heldout_count(N, evaluation.EVAL_FRACTION, evaluation.EVAL_SEED)


@pytest.mark.parametrize("kwargs, message", [
    ({"eval_fraction": 0.0}, r"eval fraction must be in \(0, 0.5\]"),
    ({"eval_fraction": 0.75}, r"eval fraction must be in \(0, 0.5\]"),
    ({"select": "simulation", "candidates": 0}, "at least 1 candidate"),
    ({"select": "best"}, "select must be one of similarity, simulation"),
    ({"rank_penalty": -0.1}, "rank penalty"),
    ({"auprc_alpha": 1.5}, "alpha"),
])
def test_bad_settings_fail_before_any_shard(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StreamingLabeler("soft_wpmi", None, np.ones((3, 4), np.float32), **kwargs)
