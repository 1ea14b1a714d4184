"""Simulation scores of neuron labels, and the re-ranking that selects labels by them.

A label *simulates* a unit when the label's CLIP score over the probe images (P[:, m], the cosine
of image and text embeddings) moves with the unit's activation. Two scores, both of which pass
NeuronEval's "missing labels" and "extra labels" sanity tests (Oikarinen et al., ICML 2025; the
AUC of ``quality.py`` fails "extra labels" for rare concepts, see tests/unit/test_metric_sanity.py):

- correlation: Pearson r between the unit's activation and the label's CLIP score (the
  single-concept "simulation" of Linear Explanations, Oikarinen & Weng, ICML 2024, on raw cosines),
  with a 95% Fisher-z interval;
- AUPRC: average precision with which the label's CLIP score ranks the unit's positives above the
  other held-out images; chance = the unit's base rate positives / images. The positives are its
  ``positives_count`` most activating held-out images that lie above its held-out minimum
  (``positive_rows``): a sparse unit active on fewer images has fewer positives, never images
  tied at its minimum picked by their index, so no score depends on the order of the images.
  Ties in the label score count as one threshold (precision at a tied score is that of the whole
  tie group), so the value does not depend on the order of equal scores either.

Both are computed on the held-out split (``cdissect_common.evaluation``) from the kept held-out
activations; units constant there (dead ones included) get r = 0 with interval [-1, 1] and AUPRC =
the base rate positives_count / images, and are reported as constant, never NaN.

For ``--select simulation`` the correlation of every unit with each of its candidate concepts is
needed on the selection split, which is streamed: ``SplitMoments`` keeps shifted sums (Σa, Σa²,
ΣÎ, ÎᵀÎ, Σa·Î) from which r follows for any concept exactly, without an [images × concepts]
matrix. ``rerank`` orders the candidates by r − rank_penalty × (place in the similarity's ranking).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Z_95 = 1.959963984540054
_BLOCK_BYTES = 64 * 2**20


@dataclass
class HeldOutScores:
    """Per unit [K]: correlation with its 95% interval, AUPRC with its base rate, constant flag;
    and the positives the AUPRC used (``positive_rows``: [n_positives, K] rows, the first
    positive_counts[k] of column k; count 0 for constant units), so an AUC can use the same."""

    correlation: np.ndarray
    correlation_low: np.ndarray
    correlation_high: np.ndarray
    auprc: np.ndarray
    auprc_base: np.ndarray
    constant: np.ndarray
    positives: np.ndarray | None = None
    positive_counts: np.ndarray | None = None


def fisher_interval(r: np.ndarray, n: int, z: float = Z_95) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of Pearson r over n pairs: tanh(atanh r ± z/√(n−3)); [-1, 1] when n ≤ 3."""
    r = np.asarray(r, dtype=np.float64)
    if n <= 3:
        return np.full_like(r, -1.0), np.full_like(r, 1.0)
    zr = np.arctanh(np.clip(r, -1.0 + 1e-15, 1.0 - 1e-15))
    half = z / np.sqrt(n - 3.0)
    return np.tanh(zr - half), np.tanh(zr + half)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of scores [n] for the positive mask [n]: mean over positives of precision at their score.

    Precision at score s counts every image scoring ≥ s (ties grouped), so it equals the sum over
    distinct thresholds of Δrecall × precision. No positive: 0."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return 0.0
    ascending = np.sort(scores)
    pos_scores = np.sort(scores[positive])
    at_or_above = scores.size - np.searchsorted(ascending, pos_scores, side="left")
    tp_at_or_above = n_pos - np.searchsorted(pos_scores, pos_scores, side="left")
    return float(np.mean(tp_at_or_above / at_or_above))


def top_rows(acts: np.ndarray, count: int) -> np.ndarray:
    """[count, K] row indices of each column's largest values; ties: the lower row first."""
    order = np.argsort(-np.asarray(acts, dtype=np.float64), axis=0, kind="stable")
    return order[:count]


def positive_rows(acts: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's positives: ([count, K] row indices by ``top_rows``, [K] how many of them count).

    Column k's first counts[k] rows are its positives: those of its top ``count`` rows whose
    activation lies above the column's minimum. Rows tied at the minimum are never positives, so a
    unit active on fewer than ``count`` rows has fewer positives rather than inactive rows chosen
    by their index, and the positives do not depend on the order of the rows (a constant column: 0).
    """
    acts = np.asarray(acts, dtype=np.float64)
    rows = top_rows(acts, count)
    counts = (np.take_along_axis(acts, rows, axis=0) > acts.min(axis=0)).sum(axis=0)
    return rows, counts


def heldout_scores(acts: np.ndarray, label_scores: np.ndarray, column: np.ndarray,
                   n_positives: int) -> HeldOutScores:
    """Correlation, interval and AUPRC of each unit's label on the held-out images.

    acts [n, K]: the units' activations on the held-out images; label_scores [n, U]: the CLIP
    score of each distinct label on the same images; column [K]: unit k's label column (-1: no
    label, scored like a constant unit); n_positives: the unit's top images counted as positives
    (those above its held-out minimum, ``positive_rows``; auprc_base is the unit's own share).
    Units are taken a block at a time (float64 within a block), so the scratch memory stays near
    _BLOCK_BYTES whatever K.
    """
    acts = np.asarray(acts)
    label_scores = np.asarray(label_scores)
    column = np.asarray(column, dtype=np.int64)
    n, K = acts.shape
    if label_scores.shape[0] != n:
        raise ValueError(f"label_scores has {label_scores.shape[0]} rows but acts has {n}; both are the held-out images")
    if not 1 <= n_positives <= n:
        raise ValueError(f"n_positives must be between 1 and the {n} held-out images, got {n_positives}")
    base = np.full(K, n_positives / n)            # constant units: the requested share
    corr, auprc = np.zeros(K), np.zeros(K)
    positives = np.zeros((n_positives, K), dtype=np.int32)
    positive_counts = np.zeros(K, dtype=np.int64)
    constant = acts.max(axis=0) == acts.min(axis=0)
    score_mean = label_scores.mean(axis=0, dtype=np.float64)
    score_norm = np.sqrt(np.maximum(np.einsum("ij,ij->j", label_scores, label_scores, dtype=np.float64)
                                    - n * score_mean ** 2, 0.0))
    step = max(1, _BLOCK_BYTES // max(1, 8 * 4 * n))          # four [n, block] float64/int64 arrays
    for k0 in range(0, K, step):
        k1 = min(K, k0 + step)
        block = acts[:, k0:k1].astype(np.float64)
        cols = column[k0:k1]
        live = (cols >= 0) & ~constant[k0:k1]
        safe = np.where(cols >= 0, cols, 0)
        centred = block - block.mean(axis=0, keepdims=True)
        scored = label_scores[:, safe].astype(np.float64) - score_mean[safe]
        denom = np.sqrt((centred ** 2).sum(axis=0)) * score_norm[safe]
        ok = live & (denom > 0)
        corr[k0:k1] = np.where(ok, (centred * scored).sum(axis=0) / np.where(ok, denom, 1.0), 0.0)
        varies = ~constant[k0:k1]
        if varies.any():
            tops, counts = positive_rows(block[:, varies], n_positives)      # [n_pos, varies], [varies]
            base[k0:k1][varies] = counts / n
            positives[:, k0:k1][:, varies] = tops
            positive_counts[k0:k1][varies] = counts
            mask = np.zeros(n, dtype=bool)
            for j, k in enumerate(np.flatnonzero(varies)):
                if cols[k] < 0:
                    continue
                mask[:] = False
                mask[tops[:counts[j], j]] = True
                auprc[k0 + k] = average_precision(label_scores[:, cols[k]], mask)
    low, high = fisher_interval(corr, n)
    dead = constant | (column < 0)
    low[dead], high[dead] = -1.0, 1.0
    auprc = np.where(dead, base, auprc)
    return HeldOutScores(correlation=corr, correlation_low=low, correlation_high=high, auprc=auprc,
                         auprc_base=base, constant=constant, positives=positives, positive_counts=positive_counts)


def rerank(candidate_correlation: torch.Tensor | np.ndarray, rank_penalty: float) -> np.ndarray:
    """[K, J] order of each unit's J candidates (similarity order in, best first out).

    Candidate j (0 = the similarity's top-1) scores r_j − rank_penalty·j; equal scores keep the
    similarity's order. rank_penalty = 0 is pure correlation."""
    r = candidate_correlation.detach().cpu().numpy() if isinstance(candidate_correlation, torch.Tensor) \
        else np.asarray(candidate_correlation)
    combined = r.astype(np.float64) - float(rank_penalty) * np.arange(r.shape[1], dtype=np.float64)[None, :]
    return np.argsort(-combined, axis=1, kind="stable")


class SplitMoments:
    """Shifted sums over the images of one split, for Pearson r of any unit with any concept.

    With ã = a − s_a and Ĩ = Î − s_I (shifts: the first shard's means, which keep the sums small
    and the float32 per-shard products accurate) the label score is P̃ = Ĩ·t up to a per-concept
    constant, and Pearson r is shift-invariant, so r(a_k, P_m) follows from n, Σã, Σã², ΣĨ, ĨᵀĨ and
    Σã·Ĩ ([K, d]) for every concept m. Per-shard products run in float32, the sums in float64.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.n = 0
        self._shift_a = self._shift_i = None
        self._sa = self._saa = self._si = self._sii = self._sai = None

    def add(self, acts: torch.Tensor, images: torch.Tensor) -> None:
        """Add rows: activations [n, K] and L2-normalised image embeddings [n, d] (float32, device)."""
        if acts.shape[0] == 0:
            return
        if self._shift_a is None:
            self._shift_a = acts.mean(dim=0, keepdim=True)
            self._shift_i = images.mean(dim=0, keepdim=True)
            K, d = acts.shape[1], images.shape[1]
            f64 = dict(dtype=torch.float64, device=self.device)
            self._sa, self._saa = torch.zeros(K, **f64), torch.zeros(K, **f64)
            self._si, self._sii = torch.zeros(d, **f64), torch.zeros(d, d, **f64)
            self._sai = torch.zeros(K, d, **f64)
        a = acts - self._shift_a
        i = images - self._shift_i
        self._sa += a.sum(dim=0).double()
        self._saa += (a * a).sum(dim=0).double()
        self._si += i.sum(dim=0).double()
        self._sii += (i.T @ i).double()
        self._sai += (a.T @ i).double()
        self.n += int(acts.shape[0])

    def correlations(self, text: torch.Tensor, concept_ids: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """[K, J] float64: r of unit k with concept concept_ids[k, j] (text: normalised [C, d]).

        Units or concepts without variance on the split get r = 0."""
        K, J = concept_ids.shape
        out = torch.zeros(K, J, dtype=torch.float64, device=self.device)
        if self.n < 2:
            return out
        chunk = max(1, min(chunk, _BLOCK_BYTES // max(1, 3 * 8 * J * self._si.shape[0])))  # ~3 [k, J, d] float64
        n = float(self.n)
        T = text.double()
        var_a = torch.clamp(self._saa - self._sa * self._sa / n, min=0.0)
        for k0 in range(0, K, chunk):
            k1 = min(K, k0 + chunk)
            t = T[concept_ids[k0:k1]]                                        # [k, J, d]
            s_p = t @ self._si                                               # [k, J]
            s_pp = ((t @ self._sii) * t).sum(dim=-1)
            s_ap = torch.einsum("kd,kjd->kj", self._sai[k0:k1], t)
            cov = s_ap - self._sa[k0:k1, None] * s_p / n
            var_p = torch.clamp(s_pp - s_p * s_p / n, min=0.0)
            denom = torch.sqrt(var_a[k0:k1, None] * var_p)
            # A variance far below float64 rounding of its sums is no variance (constant on the split).
            scale_a = self._saa[k0:k1, None].abs() + 1e-300
            ok = (denom > 0) & (var_a[k0:k1, None] > 1e-12 * scale_a) & (var_p > 1e-12 * (s_pp.abs() + 1e-300))
            out[k0:k1] = torch.where(ok, cov / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(cov))
        return out.clamp_(-1.0, 1.0)
