"""Shard intake of the streaming labeler: what is kept of a layer's shards between them.

Shards come in dataset order as (image embeddings [n, d], activations [n, K]). Kept:
- the L2-normalised image embeddings [N, d] (small: 20k images × 512 × 4 B = 40 MB);
- per neuron a running top list (activation value + global image index, by the tie rule of
  ``topk``), ``top_buffer`` long;
- per neuron the running min and max (dead = constant activation);
- for cos_similarity the exact moment sums Σ A·Î [K, d] and Σ A² [K] (``cosine.shard_moments``);
- when asked (``keep_activations``) the activations themselves, on the host, instead of a top list.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cdissect_labeler.cosine import shard_moments
from cdissect_labeler.topk import merge_top, shard_top_candidates, stable_topk


def checked_tensor(x: Any, what: str, ndim: int) -> torch.Tensor:
    """x as a floating tensor of ndim dimensions; NaN or infinite values are refused."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {tuple(t.shape)}.")
    if not t.is_floating_point():
        t = t.float()
    # One reduction first: a finite sum proves every value finite; else the exact check.
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN or infinite values; check the upstream artifact.")
    return t


def normalise_embeddings(X: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """Rows L2-normalised in float32 on device; ``float16`` first rounds them as the reference's
    GPU features are."""
    X = X.to(device)
    X = X.half().float() if precision == "float16" else X.float()
    norm = torch.linalg.vector_norm(X, dim=1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("an embedding row is all zeros and cannot be L2-normalised; "
                         "check the embedder output.")
    return X / norm


class RunningRange:
    """Per-unit min and max of activations over every row added; a unit is *dead* when they are
    equal (its activation was the same for every image). The one dead test of the labeler."""

    def __init__(self) -> None:
        self.amin: torch.Tensor | None = None
        self.amax: torch.Tensor | None = None

    def add(self, A: torch.Tensor) -> None:
        """Take the rows of A [n, K] into the range (on the device of the first rows)."""
        if A.shape[0] == 0:
            return
        amin, amax = A.amin(dim=0), A.amax(dim=0)
        if self.amin is None:
            self.amin, self.amax = amin, amax
            return
        self.amin = torch.minimum(self.amin, amin.to(self.amin.device))
        self.amax = torch.maximum(self.amax, amax.to(self.amax.device))

    def dead(self) -> torch.Tensor:
        """bool [K]: units whose activation was the same for every row added."""
        return self.amax == self.amin


class ShardIntake:
    """Takes a layer's shards in dataset order and keeps what the scorers need (module doc)."""

    def __init__(self, embedding_dim: int, device: torch.device, precision: str, top_buffer: int,
                 keep_activations: bool, moments: bool) -> None:
        self.embedding_dim = embedding_dim
        self.device = device
        self.precision = precision
        self.top_buffer = top_buffer
        self.keep_activations = keep_activations
        self.moments = moments
        self.images: list[torch.Tensor] = []
        self.kept_acts: list[torch.Tensor] = []
        self.n = 0
        self.K: int | None = None
        self.top_vals: torch.Tensor | None = None      # [K, kept] neuron-major
        self.top_idx: torch.Tensor | None = None
        self.range = RunningRange()
        self.moment_AI: torch.Tensor | None = None     # cos: Σ A·Î [K, d]
        self.moment_AA: torch.Tensor | None = None     # cos: Σ A² [K]

    def add(self, image_embeddings: Any, activations: Any) -> None:
        """Add the next shard: CLIP image embeddings [n, d] and activations [n, K]."""
        self.add_checked(*self.checked(image_embeddings, activations))

    def checked(self, image_embeddings: Any, activations: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The shard as checked tensors (I [n, d], A [n, K]): finite, of this layer's d and K, one row
        per image in both; the first shard fixes K."""
        I = checked_tensor(image_embeddings, "image_embeddings", 2)
        A = checked_tensor(activations, "activations", 2)
        d = self.embedding_dim
        if I.shape[1] != d:
            raise ValueError(f"image embeddings have dimension {I.shape[1]} but the text embeddings {d}; "
                             "embed images and concepts with the same CLIP model.")
        if I.shape[0] != A.shape[0]:
            raise ValueError(f"shard has {I.shape[0]} image embeddings but {A.shape[0]} activation rows; "
                             "they must describe the same images in the same order.")
        if self.K is None:
            self.K = int(A.shape[1])
            if self.K == 0:
                raise ValueError("activations have 0 neurons.")
        elif A.shape[1] != self.K:
            raise ValueError(f"shard has {A.shape[1]} neurons but earlier shards had {self.K}; "
                             "feed one layer per StreamingLabeler.")
        return I, A

    def add_checked(self, I: torch.Tensor, A: torch.Tensor) -> None:
        """Add rows that ``checked`` returned (or a row subset of them)."""
        n = int(A.shape[0])
        if n == 0:
            return
        A = A.to(self.device, torch.float32)
        self.images.append(normalise_embeddings(I, self.device, self.precision))
        self.range.add(A)
        if self.keep_activations:
            self.kept_acts.append(A.cpu())
        else:
            # The shard is first cut to its own top candidates, so the merge sorts 2×kept columns only.
            vals, idx = shard_top_candidates(A.T, self.top_buffer, self.n)
            self.top_vals, self.top_idx = merge_top(self.top_vals, self.top_idx, vals, idx, self.top_buffer)
        if self.moments:
            ai, aa = shard_moments(A, self.images[-1])
            self.moment_AI = ai if self.moment_AI is None else self.moment_AI + ai
            self.moment_AA = aa if self.moment_AA is None else self.moment_AA + aa
        self.n += n

    def all_images(self) -> torch.Tensor:
        """The normalised embeddings of every image [N, d] (concatenated once, then kept so)."""
        images = torch.cat(self.images, dim=0)
        self.images = [images]
        return images

    def all_activations(self) -> torch.Tensor:
        """Every kept activation [N, K], on the host (only with keep_activations)."""
        return torch.cat(self.kept_acts, dim=0)

    def dead(self) -> torch.Tensor:
        """bool [K]: neurons whose activation was the same for every image."""
        return self.range.dead()

    def top(self, need: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each neuron's top images, image-major like ``stable_topk``: (values, indices) [kept, K];
        from the kept activations, the ``need`` best (at most N)."""
        if not self.keep_activations:
            return self.top_vals.T, self.top_idx.T
        A = self.all_activations().to(self.device)
        return stable_topk(A, min(need, self.n))


__all__ = ["RunningRange", "ShardIntake", "checked_tensor", "normalise_embeddings"]
