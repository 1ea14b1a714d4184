"""rank_reorder, dense and streaming: how well each concept's CLIP ranking of a neuron's top
images reproduces their activation ranking, scaled by the concept's mean P (spec §1.4).

For neuron k with top-n activations t (descending, n = top_fraction·N) and concept m:
reorg gives each image the activation whose rank matches its CLIP rank by P[:, m];
err[m] = mean_i |t_i − reorg[i, m]|^p / base, out[m] = −err[m] / mean_i(P[i, m])^scale_p, where
base (``rank_reorder_baselines``) is a per-neuron normaliser from seeded random permutations.
"""
from __future__ import annotations

from typing import Any

import torch

from cdissect_labeler.budget import SCRATCH_BYTES, neurons_per_chunk
from cdissect_labeler.topk import top_concepts

_MIN_AVG = 1e-6


def rank_reorder_baselines(top_desc: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Per-neuron normaliser of rank_reorder: mean |t_asc − t_asc[perm]|^p over 5 permutations.

    top_desc is [n, K] (each column a neuron's top-n activations, descending). The reference
    draws the permutations unseeded; we draw them from one generator seeded with ``seed``, neuron
    after neuron, so dense and streaming computations give the same values.
    """
    n, K = top_desc.shape
    gen = torch.Generator().manual_seed(int(seed))
    t_asc = torch.flip(top_desc, dims=[0]).double().cpu()
    base = torch.empty(K, dtype=torch.float64)
    for k in range(K):
        col = t_asc[:, k:k + 1]
        perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(5)], dim=1)
        base[k] = torch.mean(torch.abs(col - col[:, 0][perms]) ** p)
    return base.to(top_desc.device)


def rank_reorder_block(P_rows: torch.Tensor, top_desc: torch.Tensor, base: torch.Tensor,
                       p: float, scale_p: float) -> torch.Tensor:
    """rank_reorder for a block of neurons: P_rows [b, n, C] (P rows of each neuron's top-n images,
    most activating first), top_desc [b, n], base [b] → [b, C]. Dead neurons (base 0) give 0;
    concepts whose mean P is ≤ 0 are scored as if it were 1e-6 (very low, finite)."""
    P64 = P_rows.double()
    avg = P64.mean(dim=1)                                            # [b, C]
    ranks = torch.argsort(torch.argsort(P64, dim=1, stable=True), dim=1, stable=True)
    t_desc = top_desc.double()
    t_asc = torch.flip(t_desc, dims=[1])
    reorg = torch.gather(t_asc.unsqueeze(2).expand_as(P64), 1, ranks)
    err = torch.mean(torch.abs(t_desc.unsqueeze(2) - reorg) ** p, dim=1)   # [b, C]
    live = base > 0
    safe = torch.where(live, base, torch.ones_like(base))
    # The reference divides by avg**scale_p, NaN when a concept's mean P is negative (never with
    # real CLIP scores); clamping keeps such concepts finite and at the bottom of the ranking.
    out = -(err / safe.unsqueeze(1)) / torch.clamp(avg, min=_MIN_AVG) ** scale_p
    return torch.where(live.unsqueeze(1), out, torch.zeros_like(out))


def top_fraction_count(params: dict[str, Any], num_images: int) -> int:
    """n = int(top_fraction · N), the neuron's top images rank_reorder scores; at least 1."""
    n = int(num_images * float(params["top_fraction"]))
    if n < 1:
        raise ValueError(f"top_fraction={params['top_fraction']} of {num_images} images selects no image; "
                         "raise top_fraction or use more images.")
    return n


def rank_reorder_top_concepts(params: dict[str, Any], images: torch.Tensor, text: torch.Tensor,
                              top_vals: torch.Tensor, top_idx: torch.Tensor, t: int,
                              neuron_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-t concepts (ids, scores) per neuron from the kept top lists [≥n, K] (streaming):
    P rows are computed only for the union of a neuron chunk's top images."""
    N, C = images.shape[0], text.shape[0]
    p, scale_p, seed = float(params["p"]), float(params["scale_p"]), int(params["seed"])
    n = top_fraction_count(params, N)
    vals, inds = top_vals[:n], top_idx[:n]
    base = rank_reorder_baselines(vals, p, seed).to(images.device)
    K = vals.shape[1]
    step = neurons_per_chunk(n * C * 8 * 5, neuron_chunk, SCRATCH_BYTES)
    ids, out = [], []
    for s in range(0, K, step):
        block = inds[:, s:s + step]                                   # [n, b]
        uniq, where = torch.unique(block, return_inverse=True)
        P_rows = images[uniq] @ text.T                                # [u, C]
        rows = P_rows[where.T]                                        # [b, n, C]
        S = rank_reorder_block(rows, vals[:, s:s + step].T, base[s:s + step], p, scale_p)
        i, v = top_concepts(S, t)
        ids.append(i)
        out.append(v)
    return torch.cat(ids), torch.cat(out)


__all__ = ["rank_reorder_baselines", "rank_reorder_block", "rank_reorder_top_concepts", "top_fraction_count"]
