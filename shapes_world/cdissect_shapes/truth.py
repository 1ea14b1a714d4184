"""Ground-truth concepts of neurons from image attributes (numpy only, no torch).

A unit's truth is the attribute value whose indicator its activations separate best, measured
by the ROC AUC of "activation predicts attribute present" (Mann-Whitney, ties averaged). The
AUC is kept: a unit with AUC 0.95 is selective for its word; one with 0.6 has no clear concept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import ATTRIBUTES


@dataclass(frozen=True)
class UnitTruth:
    """The best-separated attribute value of one unit: its word, attribute column and AUC."""

    word: str
    attribute: str
    auc: float


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Column-wise ranks (1-based) of a [N,K] array, tied values sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    n, k = x.shape
    order = np.argsort(x, axis=0, kind="mergesort")
    ranks = np.empty_like(x)
    for j in range(k):
        col = x[order[:, j], j]
        # start index of each run of equal values, and its average 1-based rank
        starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
        ends = np.r_[starts[1:], n]
        avg = (starts + ends + 1) / 2.0
        ranks[order[:, j], j] = np.repeat(avg, ends - starts)
    return ranks


def indicator_matrix(attributes: list[dict[str, str]]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """[N,V] bool indicators of every attribute value present in the probe set, with their (key, word).

    Values that every image or no image has are dropped: they separate nothing.
    """
    columns: list[np.ndarray] = []
    names: list[tuple[str, str]] = []
    for key, values in ATTRIBUTES.items():
        missing = [i for i, a in enumerate(attributes) if key not in a]
        if missing:
            raise KeyError(f"image {missing[0]} has no {key!r} attribute; attributes need columns "
                           f"{', '.join(ATTRIBUTES)} (write the probe set with write_probe_folder)")
        got = np.array([a[key] for a in attributes])
        for v in values:
            ind = got == v
            if 0 < ind.sum() < len(attributes):
                columns.append(ind)
                names.append((key, v))
    if not columns:
        raise ValueError("no attribute value separates the images (empty or uniform probe set)")
    return np.stack(columns, 1), names


def auc_matrix(activations: np.ndarray, indicators: np.ndarray) -> np.ndarray:
    """[K,V] ROC AUC of each unit's activation for each indicator (0.5 = chance, 1 = perfect)."""
    act = np.asarray(activations, dtype=np.float64)
    if act.ndim != 2:
        raise ValueError(f"activations must be [images, units], got shape {act.shape}")
    if act.shape[0] != indicators.shape[0]:
        raise ValueError(f"{act.shape[0]} activation rows but {indicators.shape[0]} images of attributes")
    ranks = average_ranks(act)
    pos = indicators.astype(np.float64)
    n1 = pos.sum(0)
    n0 = pos.shape[0] - n1
    rank_sum = ranks.T @ pos  # [K,V]
    return (rank_sum - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def unit_truths(activations: np.ndarray, attributes: list[dict[str, str]]) -> list[UnitTruth]:
    """The truth of every unit of one layer ([N,K] activations, N attribute dicts)."""
    indicators, names = indicator_matrix(attributes)
    aucs = auc_matrix(activations, indicators)
    best = aucs.argmax(1)
    return [UnitTruth(word=names[b][1], attribute=names[b][0], auc=float(aucs[k, b])) for k, b in enumerate(best)]
