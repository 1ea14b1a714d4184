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
[N, C] matrix; the math it shares with these dense versions lives in the family modules
``pmi`` (soft_wpmi, wpmi), ``rank_reorder`` and ``cosine``, the tie rule in ``topk``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cdissect_common.devices import resolve_device
from cdissect_common.vocabulary import SIMILARITY_FUNCTIONS, resolve_similarity_params

from cdissect_labeler.budget import neurons_per_chunk
from cdissect_labeler.pmi import membership_weights, pmi_dense, soft_wpmi_membership
from cdissect_labeler.rank_reorder import rank_reorder_baselines, rank_reorder_block, top_fraction_count
from cdissect_labeler.topk import stable_topk

# Names, parameters and defaults live in cdissect_common.vocabulary (the CLI validates with them);
# the keyword defaults of the functions below repeat them as the reference's signatures do, and
# tests/unit/test_vocabulary.py checks that they agree.
FUNCTIONS = SIMILARITY_FUNCTIONS


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



# ----------------------------------------------------------------------------- shared helpers
def dead_neurons(target_feats: Any) -> np.ndarray:
    """bool [K]: neurons whose activation is the same for every image (dead or constant units)."""
    A, _ = _to_tensor(target_feats, "target_feats")
    return (A.amax(dim=0) == A.amin(dim=0)).cpu().numpy()


# ----------------------------------------------------------------------------- the functions
def soft_wpmi(clip_feats: Any, target_feats: Any, top_k: int = 100, a: float = 10, lam: float = 1,
              device: str | None = "cpu", min_prob: float = 1e-7, p_start: float = 0.998,
              p_end: float = 0.97) -> Any:
    """SoftWPMI (the default): soft-membership log-likelihood of each concept over the neuron's
    top_k images, minus lam × the prior over all neurons of the layer. Returns [K, C]."""
    P, A, as_np, out_dev = _inputs(clip_feats, target_feats, device)
    off, slope = soft_wpmi_membership(top_k, p_start, p_end, min_prob)
    with torch.no_grad():
        return _output(pmi_dense(P, A, off, slope, a, lam), as_np, out_dev)


def wpmi(clip_feats: Any, target_feats: Any, top_k: int = 28, a: float = 2, lam: float = 0.6,
         device: str | None = "cpu", min_prob: float = 1e-7) -> Any:
    """WPMI: Σ over the neuron's top_k images of log(softmax(a·P) + min_prob), minus lam × prior."""
    P, A, as_np, out_dev = _inputs(clip_feats, target_feats, device)
    off, slope = membership_weights("wpmi", dict(top_k=top_k, min_prob=min_prob))
    with torch.no_grad():
        return _output(pmi_dense(P, A, off, slope, a, lam), as_np, out_dev)


def rank_reorder(clip_feats: Any, target_feats: Any, device: str | None = "cpu", p: float = 3,
                 top_fraction: float = 0.05, scale_p: float = 0.5, seed: int = 0) -> Any:
    """Rank-reorder: how well each concept's CLIP ranking of the neuron's top images reproduces
    their activation ranking, scaled by the concept's mean P. Deterministic through ``seed``."""
    P, A, as_np, out_dev = _inputs(clip_feats, target_feats, device)
    n = top_fraction_count(dict(top_fraction=top_fraction), P.shape[0])
    with torch.no_grad():
        top, inds = stable_topk(A, n)                                # [n, K]
        base = rank_reorder_baselines(top, p, seed)
        K, C = A.shape[1], P.shape[1]
        out = torch.empty(K, C, dtype=torch.float64, device=P.device)
        step = neurons_per_chunk(n * C * 8 * 5, K)
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
    """The function's defaults updated with params, each checked for type and range by
    ``cdissect_common.vocabulary`` (the CLI checks with the same rule, so both give one message)."""
    return resolve_similarity_params(function, params)
