"""The PMI-type similarity functions, soft_wpmi (the default) and wpmi, dense and streaming.

For neuron k with top-activating images top_0(k) … top_{k-1}(k) and concept m (spec §1.4):

    Q[i, m]  = softmax_m(a · P[i, :])                        p(concept m | image i)
    L[k, m]  = Σ_r log(off_r + slope_r · Q[top_r(k), m])     log p(m | the neuron's top images)
    out[k, m] = L[k, m] − lam · (logsumexp_k' L[k', m] − log K)   minus lam × log prior of m

soft_wpmi's soft membership: image r belongs to the neuron's example set with probability
p_r = p_start − (r / top_k)(p_start − p_end), so off_r = 1 − p_r + min_prob, slope_r = p_r
(``soft_wpmi_membership``); wpmi: off_r = min_prob, slope_r = 1. ``pmi_dense`` is the formula
above, line for line, on dense P and A; ``pmi_top_concepts`` computes the same numbers from the
streaming labeler's kept data, one concept tile at a time, without a [K, C] array.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from cdissect_labeler.budget import GPU_SCRATCH_BYTES, SCRATCH_BYTES, neurons_per_chunk
from cdissect_labeler.topk import merge_top, stable_topk, top_concepts

_LOG_FLOAT32_MAX = 88.0    # float32 partial products stay below e^88 (max 3.4e38)
_LSE_TILE = 4096           # concepts per block when computing softmax normalisers


def soft_wpmi_membership(top_k: int, p_start: float, p_end: float, min_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """(off_r, slope_r) float64 [top_k] of soft_wpmi: rank r contributes
    log(1 + p_r(Q − 1) + min_prob) = log((1 − p_r + min_prob) + p_r·Q), with the reference's ramp
    p_r = p_start − (r / top_k)(p_start − p_end) (built in float32 as torch.arange / top_k is)."""
    r = np.arange(top_k, dtype=np.float64)
    p = p_start - (r.astype(np.float32) / np.float32(top_k)).astype(np.float64) * (p_start - p_end)
    return 1.0 - p + min_prob, p


def membership_weights(function: str, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(off_r, slope_r) float64 [top_k] of a PMI-type function: soft_wpmi's soft membership, or
    wpmi's log(Q + min_prob)."""
    k = int(params["top_k"])
    if function == "soft_wpmi":
        return soft_wpmi_membership(k, params["p_start"], params["p_end"], params["min_prob"])
    if function == "wpmi":
        return np.full(k, float(params["min_prob"])), np.ones(k)
    raise ValueError(f"membership weights exist only for soft_wpmi and wpmi, not {function!r}.")


def subtract_prior(L: torch.Tensor, lam: float) -> torch.Tensor:
    """PMI: L[k, m] − lam·(logsumexp_k L[k, m] − log K), the prior over ALL neurons of the layer."""
    return L - lam * (torch.logsumexp(L, dim=0, keepdim=True) - math.log(L.shape[0]))


def pmi_dense(P: torch.Tensor, A: torch.Tensor, off: np.ndarray, slope: np.ndarray, a: float,
              lam: float) -> torch.Tensor:
    """out [K, C] float64 of the module's formula on dense P [N, C] and A [N, K] (neuron chunks)."""
    k = len(off)
    Q = torch.softmax(a * P, dim=1)
    _, top = stable_topk(A, k)                                       # [k, K] top_r(k)
    off_t = torch.as_tensor(off, device=P.device).view(k, 1, 1)
    slope_t = torch.as_tensor(slope, device=P.device).view(k, 1, 1)
    K, C = A.shape[1], P.shape[1]
    L = torch.empty(K, C, dtype=torch.float64, device=P.device)
    step = neurons_per_chunk(k * C * 8 * 2, K)
    for s in range(0, K, step):
        rows = Q[top[:, s:s + step]].double()                        # [k, b, C]
        L[s:s + step] = torch.log(off_t + slope_t * rows).sum(dim=0)
    return subtract_prior(L, lam)


def pmi_top_concepts(function: str, params: dict[str, Any], images: torch.Tensor, text: torch.Tensor,
                     inds: torch.Tensor, t: int, concept_tile: int,
                     neuron_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-t concepts (ids, scores) of out = L − lam·prior for every neuron, from normalised
    image embeddings [N, d], text embeddings [C, d] and each neuron's top images inds [k, K].

    L[k, m] = Σ_r log(a_r + p_r·Q[top_r(k), m]) = Σ_r log a_r + log Π_r (1 + c_r·Q), c_r = p_r / a_r.
    The product runs in float32 over at most ``group`` ranks (so it cannot overflow), then its
    log is added in float64: one fused multiply per (neuron, rank, concept) and one log per ~14
    ranks, instead of the reference's log per (neuron, rank, concept). Q rows exist only for the
    images some neuron needs, one concept tile at a time, from a per-image log-normaliser computed
    first. Within a tile all K neurons are present, so the prior (logsumexp over neurons) of each
    of its concepts is exact; each tile's scores are reduced at once to a running top-t.
    """
    dev = images.device
    off_np, slope_np = membership_weights(function, params)
    lam, a = float(params["lam"]), float(params["a"])
    k, K = inds.shape
    C = text.shape[0]
    needed, pos = torch.unique(inds.to(dev), return_inverse=True)          # pos [k, K] rows of Q
    I = images if needed.numel() == images.shape[0] else images[needed]   # (needed is sorted)
    lse = log_normaliser(I, text, a)                                        # [u] float32
    neg_lse = (-lse).unsqueeze(1)
    with np.errstate(divide="ignore"):
        ratio = np.where(off_np > 0, slope_np / np.where(off_np > 0, off_np, 1.0), np.inf)
    product_mode = bool(np.all(off_np > 0)) and np.isfinite(ratio).all()
    group = int(_LOG_FLOAT32_MAX // math.log1p(float(ratio.max()))) if product_mode else 1
    product_mode = product_mode and group >= 1
    const = float(np.sum(np.log(off_np))) if product_mode else 0.0
    off = torch.as_tensor(off_np, dtype=torch.float32, device=dev)
    slope = torch.as_tensor(slope_np, dtype=torch.float32, device=dev)
    ratio_list = [float(x) for x in ratio]
    if dev.type == "cuda":   # big tiles, all neurons at once: few kernel launches, Q tile ≤ ~1 GB
        tile, kb = min(C, max(concept_tile, GPU_SCRATCH_BYTES // (4 * max(1, I.shape[0])))), K
    else:                    # small tiles: part/buffer rows stay in cache
        tile, kb = min(C, concept_tile), min(K, neuron_chunk)
    part = torch.empty(kb, tile, device=dev)
    buf = torch.empty(kb, tile, device=dev)
    part64 = torch.empty(kb, tile, dtype=torch.float64, device=dev)
    L = torch.empty(K, tile, dtype=torch.float64, device=dev)
    best_ids = best_vals = None
    for c0 in range(0, C, tile):
        c1 = min(C, c0 + tile)
        w = c1 - c0
        # Q = exp(a·P − lse): scaling and shift fused into the GEMM, then exp in place.
        Q = torch.addmm(neg_lse, I, text[c0:c1].T, alpha=a).exp_()           # [u, w]
        for k0 in range(0, K, kb):
            k1 = min(K, k0 + kb)
            rows = k1 - k0
            acc = L[k0:k1, :w]
            acc.fill_(const)
            p, g = part[:rows, :w], buf[:rows, :w]
            if product_mode:
                p.fill_(1.0)
                since = 0
                for r in range(k):
                    torch.index_select(Q, 0, pos[r, k0:k1], out=g)
                    p.addcmul_(p, g, value=ratio_list[r])                   # p ·= 1 + c_r·Q
                    since += 1
                    if since == group or r == k - 1:
                        p64 = part64[:rows, :w]
                        p64.copy_(p)
                        acc.add_(p64.log_())
                        p.fill_(1.0)
                        since = 0
            else:                                 # c_r too large for float32 products: plain logs
                for r in range(k):
                    torch.index_select(Q, 0, pos[r, k0:k1], out=g)
                    g.mul_(slope[r]).add_(off[r])
                    p64 = part64[:rows, :w]
                    p64.copy_(g)
                    acc.add_(p64.log_())
        del Q
        ids, vals = top_concepts(subtract_prior(L[:, :w], lam), min(t, w))   # exact prior: all K neurons
        best_vals, best_ids = merge_top(best_vals, best_ids, vals, ids + c0, t)
    return best_ids, best_vals


def log_normaliser(I: torch.Tensor, text: torch.Tensor, a: float) -> torch.Tensor:
    """log Σ_m exp(a·P[i, m]) per image (softmax denominator), by blocks of images × concepts.

    Per block: shift by the block's row maximum, exponentiate in place, sum; blocks combine
    in float64 with a running maximum, as a streaming logsumexp."""
    C = text.shape[0]
    out = torch.empty(I.shape[0], dtype=torch.float32, device=I.device)
    tile = min(C, _LSE_TILE)
    rows = max(1, SCRATCH_BYTES // (4 * tile))
    buf = torch.empty(min(rows, I.shape[0]), tile, device=I.device)
    for i0 in range(0, I.shape[0], rows):
        i1 = min(I.shape[0], i0 + rows)
        run_max = run_sum = None
        for c0 in range(0, C, tile):
            P = buf[:i1 - i0, :min(tile, C - c0)]
            torch.addmm(P, I[i0:i1], text[c0:c0 + tile].T, beta=0.0, alpha=a, out=P)
            block_max = P.amax(dim=1, keepdim=True)
            block_sum = P.sub_(block_max).exp_().sum(dim=1).double()
            block_max = block_max.squeeze(1).double()
            if run_max is None:
                run_max, run_sum = block_max, block_sum
            else:
                new_max = torch.maximum(run_max, block_max)
                run_sum = run_sum * torch.exp(run_max - new_max) + block_sum * torch.exp(block_max - new_max)
                run_max = new_max
        out[i0:i1] = (run_max + torch.log(run_sum)).float()
    return out


__all__ = ["soft_wpmi_membership", "membership_weights", "subtract_prior", "pmi_dense", "pmi_top_concepts",
           "log_normaliser"]
