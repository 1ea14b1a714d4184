"""Per-unit label quality: how well the label's CLIP score singles out the unit's top images.

CLIP-Dissect's similarity value depends on the function, the concept set and the other neurons
of the layer, so it cannot be compared across runs. This figure can: for unit k with label m,
rank all probe images by their CLIP score P[:, m] (image–concept cosine) and ask how well that
ranking separates the unit's top-activating images from the rest — the Mann-Whitney AUC
(0.5 = chance, 1.0 = the label's best images are exactly the unit's top images) and its
one-sided p-value (normal approximation). numpy only: the CLI never imports torch.
"""
from __future__ import annotations

import math

import numpy as np


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    # Average ranks over runs of equal values.
    boundaries = np.flatnonzero(np.diff(sorted_vals)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc_and_p(scores: np.ndarray, positives: np.ndarray) -> tuple[float, float]:
    """AUC of `scores` separating the images `positives` (indices) from all others, and its p-value.

    Returns (nan, nan) when there are no positives or no negatives.
    """
    n_total = len(scores)
    pos = np.unique(np.asarray(positives, dtype=np.int64))
    pos = pos[(pos >= 0) & (pos < n_total)]
    n_pos, n_neg = len(pos), n_total - len(pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")
    ranks = _ranks(np.asarray(scores, dtype=np.float64))
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    auc = u / (n_pos * n_neg)
    sigma = math.sqrt(n_pos * n_neg * (n_total + 1) / 12.0)
    z = (u - n_pos * n_neg / 2.0) / sigma if sigma > 0 else 0.0
    p_value = 0.5 * math.erfc(z / math.sqrt(2.0))
    return float(auc), float(p_value)


def unit_quality(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                 labels: np.ndarray, top_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC and p-value per unit.

    image_embeddings [N, d] and text_embeddings [C, d] (re-normalised here, as the reference
    does), labels [K] concept index of each unit's label, top_images [K, m] global image indices.
    Each distinct label's score column is computed once, so cost grows with distinct labels.
    """
    img = np.asarray(image_embeddings, dtype=np.float32)
    txt = np.asarray(text_embeddings, dtype=np.float32)
    img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
    txt = txt / np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels, dtype=np.int64)
    aucs = np.full(len(labels), np.nan, dtype=np.float64)
    pvals = np.full(len(labels), np.nan, dtype=np.float64)
    for concept in np.unique(labels):
        column = img @ txt[concept]
        for unit in np.flatnonzero(labels == concept):
            aucs[unit], pvals[unit] = auc_and_p(column, top_images[unit])
    return aucs, pvals
