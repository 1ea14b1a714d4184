"""Per-unit label quality that can be compared across models, layers and concept sets.

Similarity values (soft-WPMI and friends) depend on the concept-set size and on the other neurons
of the layer (spec §6, issue #1), so they cannot be compared across runs. This module scores a
label by how well it *separates* the unit's images: take the CLIP score of the label (the P column
of the unit's top-1 concept, i.e. cos(image, concept) for every probe image) and ask how well it
ranks the unit's top-activating images above all other probe images.

- positives: the unit's top-activating set. For soft_wpmi / wpmi it is the function's own
  ``top_k`` images (100 / 28 by default), for rank_reorder its top ``top_fraction`` (5%) of N,
  for the cosine-type functions the top 5% of N (at least one image);
- AUC = P(score of a random positive > score of a random negative), ties counting one half
  (0.5 = chance, 1 = perfect separation); it is the Mann-Whitney U divided by n_pos·n_neg;
- p-value: one-sided Mann-Whitney test (positives score higher), normal approximation with tie
  correction and continuity correction, as ``scipy.stats.mannwhitneyu(..., method='asymptotic')``.

Degenerate cases are defined rather than NaN: if every score is tied or there is no negative
image, AUC = 0.5 and p = 1. numpy/scipy only.
"""
from __future__ import annotations

import numpy as np
from cdissect_common.vocabulary import PMI_FUNCTIONS
from scipy.special import ndtr

QUALITY_TOP_FRACTION = 0.05


def quality_positive_count(function: str, params: dict, num_images: int) -> int:
    """Size of the positive (top-activating) set the quality figure uses for this function."""
    if function in PMI_FUNCTIONS:
        return min(int(params["top_k"]), num_images)
    fraction = float(params.get("top_fraction", QUALITY_TOP_FRACTION)) if function == "rank_reorder" \
        else QUALITY_TOP_FRACTION
    return max(1, min(num_images, int(num_images * fraction)))


def label_quality(concept_scores: np.ndarray, unit_column: np.ndarray, positives: np.ndarray,
                  counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """AUC and one-sided Mann-Whitney p-value per unit.

    concept_scores [N, U]: the CLIP score of every image for each distinct label concept;
    unit_column [K]: which column of concept_scores is unit k's label; positives [K, n]: image
    indices of each unit's top-activating set (distinct within a row); counts [K] (optional): unit
    k's positives are the first counts[k] of its row (default: all n). Returns (auc [K], p [K])
    as float64. Sorting is done once per distinct concept, so units sharing a label are cheap.
    """
    scores = np.asarray(concept_scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"concept_scores must be [images, concepts], got shape {scores.shape}.")
    unit_column = np.asarray(unit_column, dtype=np.int64)
    positives = np.asarray(positives, dtype=np.int64)
    if positives.ndim != 2 or positives.shape[0] != unit_column.shape[0]:
        raise ValueError(f"positives must be [K, n] with K={unit_column.shape[0]}, got {positives.shape}.")
    N, U = scores.shape
    K = positives.shape[0]
    counts = np.full(K, positives.shape[1]) if counts is None else np.asarray(counts, dtype=np.int64)
    auc = np.full(K, 0.5)
    pval = np.ones(K)
    if K == 0 or not np.any((counts > 0) & (counts < N)):
        return auc, pval
    sorted_cols = np.sort(scores.T, axis=1)                       # [U, N]
    tie_term = _tie_term(sorted_cols)                              # [U]
    n = float(N)
    for k in range(K):
        n1 = int(counts[k])
        n2 = N - n1
        if n1 == 0 or n2 <= 0:
            continue
        col = sorted_cols[unit_column[k]]
        x = scores[positives[k, :n1], unit_column[k]]
        left = np.searchsorted(col, x, side="left")
        right = np.searchsorted(col, x, side="right")
        rank_sum = float(np.sum((left + 1 + right) / 2.0))        # 1-based average ranks
        u = rank_sum - n1 * (n1 + 1) / 2.0
        v = n1 * n2 / 12.0 * ((n + 1.0) - tie_term[unit_column[k]] / (n * (n - 1.0)))
        if v <= 0:
            continue
        auc[k] = u / (n1 * n2)
        z = (u - n1 * n2 / 2.0 - 0.5) / np.sqrt(v)
        pval[k] = float(ndtr(-z))
    return auc, pval


def _tie_term(sorted_rows: np.ndarray) -> np.ndarray:
    """Σ over groups of equal values of (t³ − t), per row of a row-wise sorted array."""
    U, N = sorted_rows.shape
    starts = np.ones((U, N), dtype=bool)
    starts[:, 1:] = sorted_rows[:, 1:] != sorted_rows[:, :-1]
    flat = np.flatnonzero(starts.ravel())
    lengths = np.diff(np.append(flat, U * N)).astype(np.float64)
    return np.bincount(flat // N, weights=lengths ** 3 - lengths, minlength=U)
