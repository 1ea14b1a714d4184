"""The cosine-type similarity functions from the streaming labeler's kept data (the dense
versions are ``similarity.cos_similarity`` / ``cos_similarity_cubed``).

- cos_similarity: S[k, m] = Σ_i A[i, k]·P[i, m] / (‖A_k‖·‖P_m‖), no centring. With P = Î·T̂ᵀ the
  numerator is (Σ_i A[i, k]·Î_i)·T̂_m and ‖P_m‖² = T̂_mᵀ(ÎᵀÎ)T̂_m, so the exact moments Σ A·Î [K, d]
  and Σ A² [K] (``shard_moments``, summed over shards) are all that is kept.
- cos_similarity_cubed (Label-free CBM's): centre each column of A and P over images, cube,
  divide by max(L2 norm, min_norm), then the dot product over images; a second pass over the
  kept activations and image chunks of P.
Dead neurons (constant activation) get a row of 0.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from cdissect_labeler.topk import top_concepts


def shard_moments(A: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_i A[i, k]·Î_i [K, d], Σ_i A[i, k]² [K]) float64 of one shard."""
    A64 = A.double()
    return A64.T @ images.double(), (A64 * A64).sum(dim=0)


def _top_by_neuron_chunks(chunk_scores: Callable[[int, int], torch.Tensor], K: int, t: int,
                          neuron_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-t concepts of all K neurons, neuron_chunk at a time; chunk_scores(s, e) is S[s:e] [e − s, C]."""
    ids, out = [], []
    for s in range(0, K, neuron_chunk):
        i, v = top_concepts(chunk_scores(s, min(K, s + neuron_chunk)), t)
        ids.append(i)
        out.append(v)
    return torch.cat(ids), torch.cat(out)


def cos_top_concepts(moment_AI: torch.Tensor, moment_AA: torch.Tensor, images: torch.Tensor, text: torch.Tensor,
                     dead: torch.Tensor, t: int, neuron_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-t concepts (ids, scores) per neuron of cos_similarity from the summed moments."""
    I64, T64 = images.double(), text.double()
    second = I64.T @ I64                                              # [d, d]
    p_norm = torch.sqrt(torch.clamp(((T64 @ second) * T64).sum(dim=1), min=0.0))
    p_norm = torch.where(p_norm > 0, p_norm, torch.ones_like(p_norm))
    a_norm = torch.sqrt(moment_AA)
    a_norm = torch.where(a_norm > 0, a_norm, torch.ones_like(a_norm))

    def chunk_scores(s: int, e: int) -> torch.Tensor:
        S = (moment_AI[s:e] @ T64.T) / (a_norm[s:e, None] * p_norm[None, :])
        S[dead[s:e]] = 0.0
        return S

    return _top_by_neuron_chunks(chunk_scores, a_norm.shape[0], t, neuron_chunk)


def cos_cubed_top_concepts(A: torch.Tensor, images: torch.Tensor, text: torch.Tensor, dead: torch.Tensor,
                           min_norm: float, image_chunk: int, t: int,
                           neuron_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-t concepts (ids, scores) per neuron of cos_similarity_cubed from all activations A
    [N, K] (host) and the normalised embeddings, image_chunk rows of P at a time."""
    dev = images.device
    N, K, C = A.shape[0], A.shape[1], text.shape[0]
    mu = A.double().mean(dim=0).to(dev)
    # Mean of P over images, column by column, from the same float32 P rows used below.
    col_sum = torch.zeros(C, dtype=torch.float64, device=dev)
    b = image_chunk
    for i0 in range(0, N, b):
        col_sum += (images[i0:i0 + b] @ text.T).double().sum(dim=0)
    nu = col_sum / N
    S = torch.zeros(K, C, dtype=torch.float64, device=dev)
    p_sq = torch.zeros(C, dtype=torch.float64, device=dev)
    a_sq = torch.zeros(K, dtype=torch.float64, device=dev)
    for i0 in range(0, N, b):
        Pc = ((images[i0:i0 + b] @ text.T).double() - nu) ** 3
        Ac = (A[i0:i0 + b].to(dev).double() - mu) ** 3
        S.addmm_(Ac.T, Pc)
        p_sq += (Pc * Pc).sum(dim=0)
        a_sq += (Ac * Ac).sum(dim=0)
    S /= torch.clamp(torch.sqrt(a_sq), min=min_norm)[:, None]
    S /= torch.clamp(torch.sqrt(p_sq), min=min_norm)[None, :]
    S[dead] = 0.0
    return _top_by_neuron_chunks(lambda s, e: S[s:e], K, t, neuron_chunk)


__all__ = ["shard_moments", "cos_top_concepts", "cos_cubed_top_concepts"]
