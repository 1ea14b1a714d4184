"""CLIP-Dissect's five similarity functions on dense inputs, as the authors' code computes them.

Every function takes ``clip_feats`` P [N images, C concepts] (cosine of normalised CLIP image and
text embeddings) and ``target_feats`` A [N images, K neurons] (pooled activations), numpy or torch,
and returns the similarity [K, C] of the same kind (numpy float32, or a float32 tensor on the
input's device). The label of neuron k is ``argmax_m out[k, m]``. Defaults are the reference's
(spec §1.4); where we differ it is on purpose and small:

- ties in activation ranking are broken by the lower image index (the reference leaves them to
  ``torch.topk``), so results are deterministic and the streaming labeler can reproduce them;
- ``rank_reorder`` draws its per-neuron normaliser from a seeded generator (``seed``);
- dead neurons (constant activation over all images) never yield NaN: their rows are 0 for the
  cosine-type functions and rank_reorder; ``dead_neurons`` reports them;
- sums are taken in float64, so values match the reference within its own float32 noise.

The streaming labeler (``cdissect_labeler.streaming``) computes the same numbers without the
[N, C] matrix; the helpers it shares with these dense versions live here.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from cdissect_common.devices import resolve_device
from cdissect_common.vocabulary import SIMILARITY_DEFAULTS, SIMILARITY_FUNCTIONS


# Names, parameters and defaults live in cdissect_common.vocabulary (the CLI validates with them);
# the keyword defaults of the functions below repeat them as the reference's signatures do, and
# tests/unit/test_vocabulary.py checks that they agree.
FUNCTIONS = SIMILARITY_FUNCTIONS
DEFAULTS: dict[str, dict[str, Any]] = SIMILARITY_DEFAULTS
SOFT_WPMI_DEFAULTS = DEFAULTS["soft_wpmi"]
WPMI_DEFAULTS = DEFAULTS["wpmi"]
RANK_REORDER_DEFAULTS = DEFAULTS["rank_reorder"]
COS_CUBED_DEFAULTS = DEFAULTS["cos_similarity_cubed"]
# Bytes of scratch memory a dense function may use per neuron chunk (keeps tests and CI small).
_CHUNK_BYTES = 64 * 2**20
_RANK_REORDER_MIN_AVG = 1e-6


# ----------------------------------------------------------------------------- input handling
def _to_tensor(x: Any, what: str) -> tuple[torch.Tensor, bool]:
    """(float32 tensor, input_was_numpy); rejects anything that is not a finite 2-D array."""
    was_numpy = not isinstance(x, torch.Tensor)
    t = torch.from_numpy(np.ascontiguousarray(x)) if was_numpy else x
    if t.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {tuple(t.shape)}; pass [images, columns].")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN or infinite values; clean the inputs first.")
    return t, was_numpy


def _inputs(clip_feats: Any, target_feats: Any, device: str | torch.device | None):
    P, p_np = _to_tensor(clip_feats, "clip_feats")
    A, _ = _to_tensor(target_feats, "target_feats")
    if P.shape[0] != A.shape[0]:
        raise ValueError(f"clip_feats has {P.shape[0]} images but target_feats has {A.shape[0]}; "
                         "both must have one row per probe image, in the same order.")
    if P.shape[0] == 0:
        raise ValueError("no images: clip_feats and target_feats have 0 rows.")
    out_device = None if p_np else P.device
    dev = resolve_device(device)
    return P.to(dev), A.to(dev), p_np, out_device


def _output(S: torch.Tensor, as_numpy: bool, out_device: torch.device | None) -> Any:
    S = S.float()
    return S.cpu().numpy() if as_numpy else S.to(out_device)




def _chunk(rows_bytes: int, total: int) -> int:
    """How many neurons fit the scratch budget when each needs rows_bytes."""
    return max(1, min(total, _CHUNK_BYTES // max(1, rows_bytes)))


# ----------------------------------------------------------------------------- shared helpers
def dead_neurons(target_feats: Any) -> np.ndarray:
    """bool [K]: neurons whose activation is the same for every image (dead or constant units)."""
    A, _ = _to_tensor(target_feats, "target_feats")
    return (A.amax(dim=0) == A.amin(dim=0)).cpu().numpy()


def stable_topk(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along dim 0, descending; equal values keep the lower row index first (tie rule)."""
    if k > values.shape[0]:
        raise ValueError(f"top_k={k} exceeds the number of images ({values.shape[0]}); "
                         "lower top_k or probe with more images.")
    v, i = torch.sort(values, dim=0, descending=True, stable=True)
    return v[:k], i[:k]


def membership_weights(function: str, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(offset a_r, slope p_r) float64 [top_k] so that each rank contributes log(a_r + p_r·Q).

    soft_wpmi: log(1 + p_r(Q − 1) + min_prob) = log((1 − p_r + min_prob) + p_r·Q), with the
    reference's ramp p_r = p_start − (r / top_k)(p_start − p_end); wpmi: log(Q + min_prob).
    """
    k = int(params["top_k"])
    if function == "soft_wpmi":
        r = np.arange(k, dtype=np.float64)
        # float32 ramp as the reference builds it (torch.arange / top_k in float32).
        p = (params["p_start"] - (r.astype(np.float32) / np.float32(k)).astype(np.float64)
             * (params["p_start"] - params["p_end"]))
        return 1.0 - p + params["min_prob"], p
    if function == "wpmi":
        return np.full(k, float(params["min_prob"])), np.ones(k)
    raise ValueError(f"membership weights exist only for soft_wpmi and wpmi, not {function!r}.")


def subtract_prior(L: torch.Tensor, lam: float, logsumexp_over_neurons: torch.Tensor | None = None) -> torch.Tensor:
    """PMI: L[k, m] − lam·(logsumexp_k L[k, m] − log K), the prior over ALL neurons of the layer."""
    lse = torch.logsumexp(L, dim=0, keepdim=True) if logsumexp_over_neurons is None else logsumexp_over_neurons
    return L - lam * (lse - math.log(L.shape[0]))


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
    out = -(err / safe.unsqueeze(1)) / torch.clamp(avg, min=_RANK_REORDER_MIN_AVG) ** scale_p
    return torch.where(live.unsqueeze(1), out, torch.zeros_like(out))


# ----------------------------------------------------------------------------- the functions
def _log_membership(P: torch.Tensor, A: torch.Tensor, function: str, params: dict[str, Any]) -> torch.Tensor:
    """L [K, C] float64 = Σ_r log(a_r + p_r·softmax(a·P)[top_r(k)]) (dense, neuron chunks)."""
    off, slope = membership_weights(function, params)
    k = len(off)
    Q = torch.softmax(params["a"] * P, dim=1)
    _, inds = stable_topk(A, k)                                      # [k, K]
    off_t = torch.as_tensor(off, device=P.device).view(k, 1, 1)
    slope_t = torch.as_tensor(slope, device=P.device).view(k, 1, 1)
    K, C = A.shape[1], P.shape[1]
    L = torch.empty(K, C, dtype=torch.float64, device=P.device)
    step = _chunk(k * C * 8 * 2, K)
    for s in range(0, K, step):
        rows = Q[inds[:, s:s + step]].double()                       # [k, b, C]
        L[s:s + step] = torch.log(off_t + slope_t * rows).sum(dim=0)
    return L


def soft_wpmi(clip_feats: Any, target_feats: Any, top_k: int = 100, a: float = 10, lam: float = 1,
              device: str | None = "cpu", min_prob: float = 1e-7, p_start: float = 0.998,
              p_end: float = 0.97) -> Any:
    """SoftWPMI (the default): soft-membership log-likelihood of each concept over the neuron's
    top_k images, minus lam × the prior over all neurons of the layer. Returns [K, C]."""
    P, A, as_np, out_dev = _inputs(clip_feats, target_feats, device)
    params = dict(top_k=top_k, a=a, lam=lam, min_prob=min_prob, p_start=p_start, p_end=p_end)
    with torch.no_grad():
        L = _log_membership(P, A, "soft_wpmi", params)
        return _output(subtract_prior(L, lam), as_np, out_dev)


def wpmi(clip_feats: Any, target_feats: Any, top_k: int = 28, a: float = 2, lam: float = 0.6,
         device: str | None = "cpu", min_prob: float = 1e-7) -> Any:
    """WPMI: Σ over the neuron's top_k images of log(softmax(a·P) + min_prob), minus lam × prior."""
    P, A, as_np, out_dev = _inputs(clip_feats, target_feats, device)
    params = dict(top_k=top_k, a=a, lam=lam, min_prob=min_prob)
    with torch.no_grad():
        L = _log_membership(P, A, "wpmi", params)
        return _output(subtract_prior(L, lam), as_np, out_dev)


def rank_reorder(clip_feats: Any, target_feats: Any, device: str | None = "cpu", p: float = 3,
                 top_fraction: float = 0.05, scale_p: float = 0.5, seed: int = 0) -> Any:
    """Rank-reorder: how well each concept's CLIP ranking of the neuron's top images reproduces
    their activation ranking, scaled by the concept's mean P. Deterministic through ``seed``."""
    P, A, as_np, out_dev = _inputs(clip_feats, target_feats, device)
    n = int(P.shape[0] * top_fraction)
    if n < 1:
        raise ValueError(f"top_fraction={top_fraction} of {P.shape[0]} images selects no image; "
                         "raise top_fraction or use more images.")
    with torch.no_grad():
        top, inds = stable_topk(A, n)                                # [n, K]
        base = rank_reorder_baselines(top, p, seed)
        K, C = A.shape[1], P.shape[1]
        out = torch.empty(K, C, dtype=torch.float64, device=P.device)
        step = _chunk(n * C * 8 * 5, K)
        for s in range(0, K, step):
            rows = P[inds[:, s:s + step]].permute(1, 0, 2)          # [b, n, C]
            out[s:s + step] = rank_reorder_block(rows, top[:, s:s + step].T, base[s:s + step], p, scale_p)
        return _output(out, as_np, out_dev)


def cos_similarity(clip_feats: Any, target_feats: Any, device: str | None = "cpu") -> Any:
    """Cosine over images between each activation column and each P column (no centring).
    Dead neurons (constant activation) get a row of 0 instead of the reference's NaN/noise."""
    P, A, as_np, out_dev = _inputs(clip_feats, target_feats, device)
    with torch.no_grad():
        P64, A64 = P.double(), A.double()
        Pn = P64 / _safe_norm(P64)
        An = A64 / _safe_norm(A64)
        S = An.T @ Pn
        S[_dead_mask(A)] = 0.0
        return _output(S, as_np, out_dev)


def cos_similarity_cubed(clip_feats: Any, target_feats: Any, device: str | None = "cpu",
                         min_norm: float = 1e-3) -> Any:
    """Label-free CBM's similarity: centre each column over images, cube, divide by
    max(L2 norm, min_norm), then the dot product over images. Dead neurons give 0."""
    P, A, as_np, out_dev = _inputs(clip_feats, target_feats, device)
    with torch.no_grad():
        Pc = (P.double() - P.double().mean(dim=0, keepdim=True)) ** 3
        Ac = (A.double() - A.double().mean(dim=0, keepdim=True)) ** 3
        Pc = Pc / torch.clamp(torch.linalg.vector_norm(Pc, dim=0, keepdim=True), min=min_norm)
        Ac = Ac / torch.clamp(torch.linalg.vector_norm(Ac, dim=0, keepdim=True), min=min_norm)
        S = Ac.T @ Pc
        S[_dead_mask(A)] = 0.0
        return _output(S, as_np, out_dev)


def _safe_norm(X: torch.Tensor) -> torch.Tensor:
    """Column L2 norms, with 1 where a column is all zero (its cosine is then defined as 0)."""
    n = torch.linalg.vector_norm(X, dim=0, keepdim=True)
    return torch.where(n > 0, n, torch.ones_like(n))


def _dead_mask(A: torch.Tensor) -> torch.Tensor:
    return A.amax(dim=0) == A.amin(dim=0)


def compute(function: str, clip_feats: Any, target_feats: Any, **params: Any) -> Any:
    """Dispatch by name (the CLI's --similarity_fn); unknown names list the valid ones."""
    if function not in FUNCTIONS:
        raise ValueError(f"unknown similarity function {function!r}; choose one of {', '.join(FUNCTIONS)}.")
    return globals()[function](clip_feats, target_feats, **params)


def resolve_params(function: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The function's defaults updated with params; unknown parameter names are an error."""
    if function not in FUNCTIONS:
        raise ValueError(f"unknown similarity function {function!r}; choose one of {', '.join(FUNCTIONS)}.")
    out = dict(DEFAULTS[function])
    for key, value in (params or {}).items():
        if key not in out:
            allowed = ", ".join(sorted(out)) or "none"
            raise ValueError(f"{function} has no parameter {key!r}; its parameters are: {allowed}.")
        out[key] = type(out[key])(value) if isinstance(out[key], (int, float)) and not isinstance(out[key], bool) else value
    return out
