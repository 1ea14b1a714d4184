"""The one tie rule of the labeler, used by the dense functions and the streaming labeler alike:
a top list is ordered by value, largest first, and equal values keep the lower index first
(image index for a neuron's top images, concept index for a neuron's top concepts). That is
exactly the first k of a *stable* descending sort, which ``stable_topk`` computes directly; the
other helpers get the same result faster (``top_per_row``) or incrementally (``merge_top``).
"""
from __future__ import annotations

import torch


def stable_topk(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along dim 0 (images), descending; equal values keep the lower row index first."""
    if k > values.shape[0]:
        raise ValueError(f"top_k={k} exceeds the number of images ({values.shape[0]}); "
                         "lower top_k or probe with more images.")
    v, i = torch.sort(values, dim=0, descending=True, stable=True)
    return v[:k], i[:k]


def top_per_row(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, column indices) [R, min(k, n)] of the k largest of each row of values [R, n], by
    the tie rule: the first k of a stable descending sort, but via topk.

    topk may pick any of several equal values at the cut; rows where that happens (more values
    equal to the k-th than were picked) are redone with a stable sort."""
    if k >= values.shape[1]:
        return torch.sort(values, dim=1, descending=True, stable=True)
    vals, cols = torch.topk(values, k, dim=1, sorted=False)
    cut = vals.min(dim=1, keepdim=True).values
    ambiguous = (values == cut).sum(dim=1) > (vals == cut).sum(dim=1)
    if bool(ambiguous.any()):
        rows = torch.nonzero(ambiguous).flatten()
        sv, so = torch.sort(values[rows], dim=1, descending=True, stable=True)
        vals[rows], cols[rows] = sv[:, :k], so[:, :k]
    # Order the kept ones by (value desc, index asc): sort by index, then stable sort by value.
    by_index = torch.argsort(cols, dim=1)
    cols, vals = torch.gather(cols, 1, by_index), torch.gather(vals, 1, by_index)
    vals, by_value = torch.sort(vals, dim=1, descending=True, stable=True)
    return vals, torch.gather(cols, 1, by_value)


def merge_top(vals: torch.Tensor | None, idx: torch.Tensor | None, new_vals: torch.Tensor,
              new_idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge running top lists [R, *] with those of a later block whose indices are all higher
    (the next shard of images, the next tile of concepts), keeping k per row: a stable sort of
    the concatenation keeps the earlier, lower index first among equal values."""
    if vals is None or idx is None:
        return new_vals, new_idx
    all_vals = torch.cat([vals, new_vals], dim=1)
    all_idx = torch.cat([idx, new_idx], dim=1)
    order = torch.sort(all_vals, dim=1, descending=True, stable=True)[1][:, :k]
    return torch.gather(all_vals, 1, order), torch.gather(all_idx, 1, order)


def shard_top_candidates(values: torch.Tensor, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of values [K, n] (one neuron's activations over a shard) its k largest values and
    their global image indices (offset + column), by the tie rule."""
    vals, cols = top_per_row(values, k)
    return vals, cols.to(values.device) + offset


def top_concepts(S: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(concept ids, scores) of the t best concepts of each row of S [K, C], best first; equal
    scores: the lower concept index first (so duplicate concepts resolve like numpy's argmax)."""
    vals, ids = top_per_row(S, t)
    return ids, vals


__all__ = ["stable_topk", "top_per_row", "merge_top", "shard_top_candidates", "top_concepts"]
