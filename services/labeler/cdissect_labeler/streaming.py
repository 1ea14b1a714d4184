"""StreamingLabeler: CLIP-Dissect labels from shards, never holding the [images × concepts] matrix.

Feed the shards of one layer in dataset order with ``add_shard(image_embeddings [n, d],
activations [n, K])``, then call ``finish()`` for a ``LayerLabels``. What is kept between shards:

- the L2-normalised image embeddings [N, d] (small: 20k images × 512 × 4 B = 40 MB);
- per neuron a running top list (activation value + global image index; ties: the lower image
  index first, the rule the dense functions in ``similarity`` use as well);
- per neuron the running min and max (dead = constant activation);
- for cos_similarity the exact moment sums Σ A·Î [K, d] and Σ A² [K];
- only for cos_similarity_cubed (which centres activations by their mean over all images), and for
  rank_reorder / cos_similarity when ``num_images`` is not given (they need the top 5% of N), the
  activations themselves, on the host.

At ``finish`` the concept scores are computed from the kept data, P = Î·T̂ᵀ one block at a time:

- soft_wpmi / wpmi: only the images in some neuron's top-k are used. A first pass computes each
  image's softmax log-normaliser over all concepts; then, one concept tile at a time, Q = softmax
  rows restricted to the tile, and for every neuron the product over its ranks of
  (1 + c_r·Q[top_r, m]) (with L = Σ_r log a_r + log Π): one fused multiply per (neuron, rank,
  concept) and one log per ~14 ranks, instead of the reference's log per (neuron, rank, concept).
  Every tile holds all K neurons, so the prior (logsumexp over neurons) is exact; each tile's
  scores are reduced at once to a running top-t per neuron, so no [K, C] array exists either;
- rank_reorder: P rows for the union of a neuron chunk's top images only;
- cos_similarity: S = (Σ A·Î)·T̂ᵀ / (‖A‖·‖P‖) with ‖P_m‖² = t̂_mᵀ(ÎᵀÎ)t̂_m — exact moments;
- cos_similarity_cubed: a second pass over the kept activations and image chunks of P.

Memory at finish is about N·d (embeddings) + N·tile (one Q tile) + K·tile (scores of the tile)
floats; neuron_chunk and concept_tile trade memory for speed on CPU (on CUDA tiles are larger).
``precision='float16'`` reproduces the reference's fp16 CLIP features (GPU runs): embeddings are
cast to float16 and back before normalising. Everything runs on ``device`` (cpu or cuda).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from cdissect_common.vocabulary import PMI_FUNCTIONS, PRECISIONS

from cdissect_labeler import similarity as sim
from cdissect_labeler.labels import LayerLabels
from cdissect_labeler.quality import label_quality, quality_positive_count

_LOG_FLOAT32_MAX = 88.0    # float32 partial products stay below e^88 (max 3.4e38)
_SCRATCH_BYTES = 32 * 2**20
_LSE_TILE = 4096           # concepts per block when computing softmax normalisers
_GPU_SCRATCH_BYTES = 2**30


def _tensor(x: Any, what: str, ndim: int) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {tuple(t.shape)}.")
    if not t.is_floating_point():
        t = t.float()
    # One reduction first: a finite sum proves every value finite; else the exact check.
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN or infinite values; check the upstream artifact.")
    return t


class StreamingLabeler:
    """Label the neurons of one layer from shards of image embeddings and activations.

    function: one of ``similarity.FUNCTIONS``; params: its parameters (defaults: the reference's);
    text_embeddings [C, d]: CLIP text embeddings of the concept set, in its word order;
    device: 'cpu', 'cuda', 'cuda:N' or 'auto'; precision: 'float32' or 'float16' (reference GPU
    features); neuron_chunk: neurons processed together at finish (memory/speed trade-off);
    concept_tile: concepts per tile in soft_wpmi/wpmi; image_chunk: rows of P computed at once
    by cos_similarity_cubed (default: ~64 MB of float32); num_images: the probe
    set size when known in advance (lets rank_reorder and the cosine functions keep only running
    top lists instead of all activations; finish checks it); max_top_images: how many top images
    per neuron are kept for ``finish(top_images=...)``.
    """

    def __init__(self, function: str, params: dict[str, Any] | None, text_embeddings: Any,
                 device: str | torch.device | None = "cpu", precision: str = "float32",
                 neuron_chunk: int = 256, image_chunk: int | None = None,
                 num_images: int | None = None, max_top_images: int = 100, concept_tile: int = 512) -> None:
        self.function = function
        self.params = sim.resolve_params(function, params)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        if neuron_chunk < 1:
            raise ValueError(f"neuron_chunk must be ≥ 1, got {neuron_chunk}.")
        if num_images is not None and num_images < 1:
            raise ValueError(f"num_images must be ≥ 1 when given, got {num_images}.")
        if function in PMI_FUNCTIONS:
            off, _ = sim.membership_weights(function, self.params)
            if not bool(np.all(off > 0)):
                raise ValueError(f"{function} parameters {self.params} make a membership factor ≤ 0 (log of 0 "
                                 "or less); keep min_prob > 0 and p_start, p_end ≤ 1.")
        self.device = sim.resolve_device(device)
        self.precision = precision
        self.neuron_chunk = int(neuron_chunk)
        self.num_images = num_images
        self.max_top_images = int(max_top_images)
        if concept_tile < 1:
            raise ValueError(f"concept_tile must be ≥ 1, got {concept_tile}.")
        self.concept_tile = int(concept_tile)
        T = _tensor(text_embeddings, "text_embeddings", 2)
        if T.shape[0] == 0:
            raise ValueError("text_embeddings has no rows: the concept set is empty.")
        self.text = self._normalise(T)                                   # [C, d] float32
        C = self.text.shape[0]
        self.image_chunk = int(image_chunk) if image_chunk else max(16, _SCRATCH_BYTES // (4 * C))
        self._images: list[torch.Tensor] = []
        self._kept_acts: list[torch.Tensor] = []
        self._n = 0
        self._K: int | None = None
        self._top_vals: torch.Tensor | None = None
        self._top_idx: torch.Tensor | None = None
        self._amin: torch.Tensor | None = None
        self._amax: torch.Tensor | None = None
        self._moment_AI: torch.Tensor | None = None                      # cos: Σ A·Î [K, d]
        self._moment_AA: torch.Tensor | None = None                      # cos: Σ A² [K]
        self._keep_activations = function == "cos_similarity_cubed" or (
            function not in PMI_FUNCTIONS and num_images is None)
        self._buffer = self._buffer_size()

    # ------------------------------------------------------------------ intake
    def _normalise(self, X: torch.Tensor) -> torch.Tensor:
        X = X.to(self.device)
        X = X.half().float() if self.precision == "float16" else X.float()
        norm = torch.linalg.vector_norm(X, dim=1, keepdim=True)
        if bool((norm == 0).any()):
            raise ValueError("an embedding row is all zeros and cannot be L2-normalised; "
                             "check the embedder output.")
        return X / norm

    def _buffer_size(self) -> int:
        """Rows of the running top list (0 when all activations are kept instead)."""
        if self._keep_activations:
            return 0
        if self.function in PMI_FUNCTIONS:
            return max(int(self.params["top_k"]), self.max_top_images)
        assert self.num_images is not None
        need = quality_positive_count(self.function, self.params, self.num_images)
        if self.function == "rank_reorder":
            need = max(need, int(self.num_images * self.params["top_fraction"]))
        return max(need, self.max_top_images)

    @property
    def num_images_seen(self) -> int:
        """Images added so far."""
        return self._n

    def add_shard(self, image_embeddings: Any, activations: Any) -> None:
        """Add the next shard (dataset order): CLIP image embeddings [n, d] and activations [n, K]."""
        I = _tensor(image_embeddings, "image_embeddings", 2)
        A = _tensor(activations, "activations", 2)
        d = self.text.shape[1]
        if I.shape[1] != d:
            raise ValueError(f"image embeddings have dimension {I.shape[1]} but the text embeddings {d}; "
                             "embed images and concepts with the same CLIP model.")
        if I.shape[0] != A.shape[0]:
            raise ValueError(f"shard has {I.shape[0]} image embeddings but {A.shape[0]} activation rows; "
                             "they must describe the same images in the same order.")
        if self._K is None:
            self._K = int(A.shape[1])
            if self._K == 0:
                raise ValueError("activations have 0 neurons.")
        elif A.shape[1] != self._K:
            raise ValueError(f"shard has {A.shape[1]} neurons but earlier shards had {self._K}; "
                             "feed one layer per StreamingLabeler.")
        n = int(A.shape[0])
        if n == 0:
            return
        A = A.to(self.device, torch.float32)
        self._images.append(self._normalise(I))
        amin, amax = A.amin(dim=0), A.amax(dim=0)
        self._amin = amin if self._amin is None else torch.minimum(self._amin, amin)
        self._amax = amax if self._amax is None else torch.maximum(self._amax, amax)
        if self._keep_activations:
            self._kept_acts.append(A.cpu())
        else:
            self._merge_top(A)
        if self.function == "cos_similarity":
            A64 = A.double()
            ai = A64.T @ self._images[-1].double()
            aa = (A64 * A64).sum(dim=0)
            self._moment_AI = ai if self._moment_AI is None else self._moment_AI + ai
            self._moment_AA = aa if self._moment_AA is None else self._moment_AA + aa
        self._n += n

    def _merge_top(self, A: torch.Tensor) -> None:
        """Merge a shard into the running top list, ties ordered by the lower image index.

        Kept neuron-major ([K, kept], rows contiguous); ``_final_top`` hands it out image-major
        ([kept, K]) like ``similarity.stable_topk``. The shard is first cut to its own top
        candidates (``shard_top_candidates``), so the stable sort runs on 2×kept columns only."""
        vals, idx = shard_top_candidates(A.T, self._buffer, self._n)
        if self._top_vals is not None:
            vals = torch.cat([self._top_vals, vals], dim=1)
            idx = torch.cat([self._top_idx, idx], dim=1)
        keep = min(self._buffer, vals.shape[1])
        vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
        self._top_vals = vals[:, :keep].contiguous()
        self._top_idx = torch.gather(idx, 1, order[:, :keep])

    # ------------------------------------------------------------------ finish
    def finish(self, top_concepts: int = 5, top_images: int = 10, quality: bool = True) -> LayerLabels:
        """Compute the labels of every neuron: top concepts with scores, top images, dead, quality."""
        N, K, C = self._n, self._K, self.text.shape[0]
        if N == 0 or K is None:
            raise ValueError("no shard was added; call add_shard before finish.")
        if self.num_images is not None and N != self.num_images:
            raise ValueError(f"num_images={self.num_images} was announced but {N} images were added; "
                             "pass the probe set's true size or leave num_images unset.")
        if not 1 <= top_concepts <= C:
            raise ValueError(f"top_concepts must be between 1 and the {C} concepts, got {top_concepts}.")
        if top_images < 1:
            raise ValueError(f"top_images must be ≥ 1, got {top_images}.")
        with torch.no_grad():
            images = torch.cat(self._images, dim=0)
            self._images = [images]                   # one copy only (finish may be called again)
            top_vals, top_idx = self._final_top(N)
            if top_images > top_idx.shape[0]:
                raise ValueError(f"top_images={top_images} but only {top_idx.shape[0]} are kept per neuron; "
                                 f"create the StreamingLabeler with max_top_images≥{top_images}.")
            dead = (self._amax == self._amin)
            ids, scores = self._scores(images, top_vals, top_idx, top_concepts)
            auc = np.full(K, 0.5)
            pval = np.ones(K)
            if quality:
                n_pos = quality_positive_count(self.function, self.params, N)
                auc, pval = self._quality(images, ids[:, 0], top_idx[:n_pos].T)
            dead_np = dead.cpu().numpy()
            auc[dead_np], pval[dead_np] = 0.5, 1.0
            return LayerLabels(concept_ids=ids.cpu().numpy(), scores=scores.float().cpu().numpy(),
                               top_images=top_idx[:top_images].T.cpu().numpy(), dead=dead_np,
                               quality_auc=auc, quality_p=pval)

    def _final_top(self, N: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._keep_activations:
            return self._top_vals.T, self._top_idx.T
        A = torch.cat(self._kept_acts, dim=0).to(self.device)
        need = max(quality_positive_count(self.function, self.params, N), self.max_top_images)
        if self.function == "rank_reorder":
            need = max(need, int(N * self.params["top_fraction"]))
        return sim.stable_topk(A, min(need, N))

    def _scores(self, images: torch.Tensor, top_vals: torch.Tensor, top_idx: torch.Tensor,
                t: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.function
        if f in PMI_FUNCTIONS:
            k = int(self.params["top_k"])
            if k > images.shape[0]:
                raise ValueError(f"top_k={k} exceeds the {images.shape[0]} probe images; lower top_k.")
            return self._pmi_labels(images, top_idx[:k], t)
        if f == "rank_reorder":
            return self._rank_reorder(images, top_vals, top_idx, t)
        if f == "cos_similarity":
            return self._cos(images, t)
        return self._cos_cubed(images, t)

    # soft_wpmi / wpmi ----------------------------------------------------------
    def _pmi_labels(self, images: torch.Tensor, inds: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-t concepts of L − lam·prior, concept tile by concept tile; no [K, C] array is kept.

        L[k, m] = Σ_r log(a_r + p_r·Q[top_r(k), m]) = Σ_r log a_r + log Π_r (1 + c_r·Q), c_r = p_r / a_r.
        The product runs in float32 over at most ``group`` ranks (so it cannot overflow), then its
        log is added in float64. Q rows exist only for the images some neuron needs, one concept
        tile at a time, from a per-image log-normaliser computed first. Within a tile all K neurons
        are present, so the prior (logsumexp over neurons) of each of its concepts is exact.
        """
        dev = self.device
        off_np, slope_np = sim.membership_weights(self.function, self.params)
        lam, a = float(self.params["lam"]), float(self.params["a"])
        k, K = inds.shape
        C = self.text.shape[0]
        needed, pos = torch.unique(inds.to(dev), return_inverse=True)          # pos [k, K] rows of Q
        I = images if needed.numel() == images.shape[0] else images[needed]   # (needed is sorted)
        lse = self._log_normaliser(I, a)                                        # [u] float32
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
            tile, kb = min(C, max(self.concept_tile, _GPU_SCRATCH_BYTES // (4 * max(1, I.shape[0])))), K
        else:                    # small tiles: part/buffer rows stay in cache
            tile, kb = min(C, self.concept_tile), min(K, self.neuron_chunk)
        part = torch.empty(kb, tile, device=dev)
        buf = torch.empty(kb, tile, device=dev)
        part64 = torch.empty(kb, tile, dtype=torch.float64, device=dev)
        L = torch.empty(K, tile, dtype=torch.float64, device=dev)
        best_ids = best_vals = None
        log_k = math.log(K)
        for c0 in range(0, C, tile):
            c1 = min(C, c0 + tile)
            w = c1 - c0
            # Q = exp(a·P − lse): scaling and shift fused into the GEMM, then exp in place.
            Q = torch.addmm(neg_lse, I, self.text[c0:c1].T, alpha=a).exp_()      # [u, w]
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
            Lt = L[:, :w]
            prior = torch.logsumexp(Lt, dim=0, keepdim=True) - log_k            # exact: all K neurons
            ids, vals = top_concepts(Lt - lam * prior, min(t, w))
            best_ids, best_vals = _merge_top_concepts(best_ids, best_vals, ids + c0, vals, t)
        return best_ids, best_vals

    def _log_normaliser(self, I: torch.Tensor, a: float) -> torch.Tensor:
        """log Σ_m exp(a·P[i, m]) per image (softmax denominator), by blocks of images × concepts.

        Per block: shift by the block's row maximum, exponentiate in place, sum; blocks combine
        in float64 with a running maximum, as a streaming logsumexp."""
        C = self.text.shape[0]
        out = torch.empty(I.shape[0], dtype=torch.float32, device=I.device)
        tile = min(C, _LSE_TILE)
        rows = max(1, _SCRATCH_BYTES // (4 * tile))
        buf = torch.empty(min(rows, I.shape[0]), tile, device=I.device)
        for i0 in range(0, I.shape[0], rows):
            i1 = min(I.shape[0], i0 + rows)
            run_max = run_sum = None
            for c0 in range(0, C, tile):
                P = buf[:i1 - i0, :min(tile, C - c0)]
                torch.addmm(P, I[i0:i1], self.text[c0:c0 + tile].T, beta=0.0, alpha=a, out=P)
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

    # rank_reorder ---------------------------------------------------------------
    def _rank_reorder(self, images: torch.Tensor, top_vals: torch.Tensor, top_idx: torch.Tensor,
                      t: int) -> tuple[torch.Tensor, torch.Tensor]:
        N, C = images.shape[0], self.text.shape[0]
        p, scale_p, seed = float(self.params["p"]), float(self.params["scale_p"]), int(self.params["seed"])
        n = int(N * float(self.params["top_fraction"]))
        if n < 1:
            raise ValueError(f"top_fraction={self.params['top_fraction']} of {N} images selects no image.")
        vals, inds = top_vals[:n], top_idx[:n]
        base = sim.rank_reorder_baselines(vals, p, seed).to(self.device)
        K = vals.shape[1]
        step = max(1, min(self.neuron_chunk, _SCRATCH_BYTES // max(1, n * C * 8 * 5)))
        ids, out = [], []
        for s in range(0, K, step):
            block = inds[:, s:s + step]                                   # [n, b]
            uniq, where = torch.unique(block, return_inverse=True)
            P_rows = images[uniq] @ self.text.T                           # [u, C]
            rows = P_rows[where.T]                                        # [b, n, C]
            S = sim.rank_reorder_block(rows, vals[:, s:s + step].T, base[s:s + step], p, scale_p)
            i, v = top_concepts(S, t)
            ids.append(i)
            out.append(v)
        return torch.cat(ids), torch.cat(out)

    # cosine-type ------------------------------------------------------------------
    def _dead(self) -> torch.Tensor:
        return self._amax == self._amin

    def _cos(self, images: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        I64, T64 = images.double(), self.text.double()
        second = I64.T @ I64                                              # [d, d]
        p_norm = torch.sqrt(torch.clamp(((T64 @ second) * T64).sum(dim=1), min=0.0))
        p_norm = torch.where(p_norm > 0, p_norm, torch.ones_like(p_norm))
        a_norm = torch.sqrt(self._moment_AA)
        a_norm = torch.where(a_norm > 0, a_norm, torch.ones_like(a_norm))
        dead = self._dead()
        ids, out = [], []
        for s in range(0, a_norm.shape[0], self.neuron_chunk):
            e = s + self.neuron_chunk
            S = (self._moment_AI[s:e] @ T64.T) / (a_norm[s:e, None] * p_norm[None, :])
            S[dead[s:e]] = 0.0
            i, v = top_concepts(S, t)
            ids.append(i)
            out.append(v)
        return torch.cat(ids), torch.cat(out)

    def _cos_cubed(self, images: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        min_norm = float(self.params["min_norm"])
        A = torch.cat(self._kept_acts, dim=0)                              # host [N, K]
        N, K, C = A.shape[0], A.shape[1], self.text.shape[0]
        mu = A.double().mean(dim=0).to(self.device)
        # Mean of P over images, column by column, from the same float32 P rows used below.
        col_sum = torch.zeros(C, dtype=torch.float64, device=self.device)
        b = self.image_chunk
        for i0 in range(0, N, b):
            col_sum += (images[i0:i0 + b] @ self.text.T).double().sum(dim=0)
        nu = col_sum / N
        S = torch.zeros(K, C, dtype=torch.float64, device=self.device)
        p_sq = torch.zeros(C, dtype=torch.float64, device=self.device)
        a_sq = torch.zeros(K, dtype=torch.float64, device=self.device)
        for i0 in range(0, N, b):
            Pc = ((images[i0:i0 + b] @ self.text.T).double() - nu) ** 3
            Ac = (A[i0:i0 + b].to(self.device).double() - mu) ** 3
            S.addmm_(Ac.T, Pc)
            p_sq += (Pc * Pc).sum(dim=0)
            a_sq += (Ac * Ac).sum(dim=0)
        S /= torch.clamp(torch.sqrt(a_sq), min=min_norm)[:, None]
        S /= torch.clamp(torch.sqrt(p_sq), min=min_norm)[None, :]
        S[self._dead()] = 0.0
        ids, out = [], []
        for s in range(0, K, self.neuron_chunk):
            i, v = top_concepts(S[s:s + self.neuron_chunk], t)
            ids.append(i)
            out.append(v)
        return torch.cat(ids), torch.cat(out)

    # quality --------------------------------------------------------------------------
    def _quality(self, images: torch.Tensor, label: torch.Tensor,
                 positives: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Label quality per unit, a block of distinct label concepts at a time (bounded memory)."""
        K = label.shape[0]
        uniq, column = torch.unique(label, return_inverse=True)
        column_np, positives_np = column.cpu().numpy(), positives.cpu().numpy()
        auc, pval = np.full(K, 0.5), np.ones(K)
        block = max(1, _SCRATCH_BYTES // (16 * images.shape[0]))
        for u0 in range(0, uniq.shape[0], block):
            units = np.flatnonzero((column_np >= u0) & (column_np < u0 + block))
            scores = (images @ self.text[uniq[u0:u0 + block]].T).float().cpu().numpy()   # [N, block]
            auc[units], pval[units] = label_quality(scores, column_np[units] - u0, positives_np[units])
        return auc, pval


def shard_top_candidates(values: torch.Tensor, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of values [K, n] (one neuron's activations over a shard) its k largest values and
    their global image indices (offset + column), sorted by value descending and, among equal
    values, by index ascending: exactly the first k of a stable descending sort, but via topk.

    topk may pick any of several equal values at the cut; rows where that happens (more values
    equal to the k-th than were picked) are redone with a stable sort."""
    K, n = values.shape
    dev = values.device
    if k >= n:
        vals, order = torch.sort(values, dim=1, descending=True, stable=True)
        return vals, order + offset
    vals, cols = torch.topk(values, k, dim=1, sorted=False)
    cut = vals.min(dim=1, keepdim=True).values
    ambiguous = (values == cut).sum(dim=1) > (vals == cut).sum(dim=1)
    if bool(ambiguous.any()):
        rows = torch.nonzero(ambiguous).flatten()
        sv, so = torch.sort(values[rows], dim=1, descending=True, stable=True)
        vals[rows], cols[rows] = sv[:, :k], so[:, :k]
    # Order candidates by (value desc, index asc): sort by index, then stable sort by value.
    by_index = torch.argsort(cols, dim=1)
    cols, vals = torch.gather(cols, 1, by_index), torch.gather(vals, 1, by_index)
    vals, by_value = torch.sort(vals, dim=1, descending=True, stable=True)
    return vals, torch.gather(cols, 1, by_value).to(dev) + offset


def top_concepts(S: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the t largest values, best first; equal values: the lower concept index first
    (so duplicate concepts in a set resolve the same way as numpy's argmax)."""
    vals, ids = torch.topk(S, t, dim=1)
    threshold = vals[:, -1:]
    n_equal = (S == threshold).sum(dim=1)
    n_equal_kept = (vals == threshold).sum(dim=1)
    fix = torch.nonzero(n_equal > n_equal_kept).flatten().tolist()
    for row in fix:                      # rare: a tie straddles the cut; redo the row stably
        order = torch.sort(S[row], descending=True, stable=True)[1][:t]
        ids[row], vals[row] = order, S[row][order]
    # Within the kept set, order by (value desc, index asc).
    key_order = torch.argsort(ids, dim=1)
    ids, vals = torch.gather(ids, 1, key_order), torch.gather(vals, 1, key_order)
    order = torch.sort(vals, dim=1, descending=True, stable=True)[1]
    return torch.gather(ids, 1, order), torch.gather(vals, 1, order)


def _merge_top_concepts(ids: torch.Tensor | None, vals: torch.Tensor | None, new_ids: torch.Tensor,
                        new_vals: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge running top-t concept lists with those of a later tile (higher concept indices):
    a stable sort keeps the earlier, lower index first among equal values."""
    if ids is None:
        return new_ids, new_vals
    all_vals = torch.cat([vals, new_vals], dim=1)
    all_ids = torch.cat([ids, new_ids], dim=1)
    order = torch.sort(all_vals, dim=1, descending=True, stable=True)[1][:, :t]
    return torch.gather(all_ids, 1, order), torch.gather(all_vals, 1, order)
