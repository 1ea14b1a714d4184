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

- soft_wpmi / wpmi: image chunks of P → Q = softmax(a·P) rows, and for every (neuron, rank) whose
  image is in the chunk the factor (a_r + p_r·Q) is multiplied into a float64 product per
  (neuron, concept); one log per (neuron, concept) at the end replaces the reference's log per
  (neuron, rank, concept). The prior over all neurons is a running logsumexp over neuron chunks,
  subtracted afterwards, so it is exact whatever the chunking;
- rank_reorder: P rows for the union of a neuron chunk's top images only;
- cos_similarity: S = (Σ A·Î)·T̂ᵀ / (‖A‖·‖P‖) with ‖P_m‖² = t̂_mᵀ(ÎᵀÎ)t̂_m — exact moments;
- cos_similarity_cubed: a second pass over the kept activations and image chunks of P.

``precision='float16'`` reproduces the reference's fp16 CLIP features (GPU runs): embeddings are
cast to float16 and back before normalising. Everything runs on ``device`` (cpu or cuda).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from cdissect_labeler import similarity as sim
from cdissect_labeler.labels import LayerLabels
from cdissect_labeler.quality import label_quality, quality_positive_count

PRECISIONS = ("float32", "float16")
_FLOAT32_TINY = 1e-37      # float32 partial products stay above this (normal range)
_FLOAT64_TINY = 1e-290     # float64 running products stay above this, else sums of logs are kept
_SCRATCH_BYTES = 64 * 2**20


def _tensor(x: Any, what: str, ndim: int) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {tuple(t.shape)}.")
    if not t.is_floating_point():
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN or infinite values; check the upstream artifact.")
    return t


class StreamingLabeler:
    """Label the neurons of one layer from shards of image embeddings and activations.

    function: one of ``similarity.FUNCTIONS``; params: its parameters (defaults: the reference's);
    text_embeddings [C, d]: CLIP text embeddings of the concept set, in its word order;
    device: 'cpu', 'cuda', 'cuda:N' or 'auto'; precision: 'float32' or 'float16' (reference GPU
    features); neuron_chunk: neurons processed together at finish (memory/speed trade-off);
    image_chunk: rows of P computed at once (default: ~64 MB of float32); num_images: the probe
    set size when known in advance (lets rank_reorder and the cosine functions keep only running
    top lists instead of all activations; finish checks it); max_top_images: how many top images
    per neuron are kept for ``finish(top_images=...)``.
    """

    def __init__(self, function: str, params: dict[str, Any] | None, text_embeddings: Any,
                 device: str | torch.device | None = "cpu", precision: str = "float32",
                 neuron_chunk: int = 256, image_chunk: int | None = None,
                 num_images: int | None = None, max_top_images: int = 100) -> None:
        self.function = function
        self.params = sim.resolve_params(function, params)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        if neuron_chunk < 1:
            raise ValueError(f"neuron_chunk must be ≥ 1, got {neuron_chunk}.")
        if num_images is not None and num_images < 1:
            raise ValueError(f"num_images must be ≥ 1 when given, got {num_images}.")
        self.device = sim.resolve_device(device)
        self.precision = precision
        self.neuron_chunk = int(neuron_chunk)
        self.num_images = num_images
        self.max_top_images = int(max_top_images)
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
            function in ("rank_reorder", "cos_similarity") and num_images is None)
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
        if self.function in ("soft_wpmi", "wpmi"):
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
        """Merge a shard into the running top list; stable sort keeps lower indices first on ties."""
        idx = torch.arange(self._n, self._n + A.shape[0], device=self.device).unsqueeze(1).expand_as(A)
        if self._top_vals is not None:
            A = torch.cat([self._top_vals, A], dim=0)
            idx = torch.cat([self._top_idx, idx], dim=0)
        vals, order = torch.sort(A, dim=0, descending=True, stable=True)
        keep = min(self._buffer, vals.shape[0])
        self._top_vals = vals[:keep].contiguous()
        self._top_idx = torch.gather(idx, 0, order[:keep]).contiguous()

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
            return self._top_vals, self._top_idx
        A = torch.cat(self._kept_acts, dim=0).to(self.device)
        need = max(quality_positive_count(self.function, self.params, N), self.max_top_images)
        if self.function == "rank_reorder":
            need = max(need, int(N * self.params["top_fraction"]))
        return sim.stable_topk(A, min(need, N))

    def _scores(self, images: torch.Tensor, top_vals: torch.Tensor, top_idx: torch.Tensor,
                t: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.function
        if f in ("soft_wpmi", "wpmi"):
            k = int(self.params["top_k"])
            if k > images.shape[0]:
                raise ValueError(f"top_k={k} exceeds the {images.shape[0]} probe images; lower top_k.")
            L = self._log_membership(images, top_idx[:k])
            return self._pmi_top(L, float(self.params["lam"]), t)
        if f == "rank_reorder":
            return self._rank_reorder(images, top_vals, top_idx, t)
        if f == "cos_similarity":
            return self._cos(images, t)
        return self._cos_cubed(images, t)

    # soft_wpmi / wpmi ----------------------------------------------------------
    def _log_membership(self, images: torch.Tensor, inds: torch.Tensor) -> torch.Tensor:
        """L [K, C] float64 = Σ_r log(a_r + p_r·Q[top_r(k)]), from image chunks of Q."""
        dev = self.device
        off_np, slope_np = sim.membership_weights(self.function, self.params)
        k, K = inds.shape
        C = self.text.shape[0]
        min_factor = float(np.min(off_np))
        # Partial products in float32 over at most `group` factors, then into float64.
        group = max(1, int(math.log(_FLOAT32_TINY) / math.log(min_factor))) if 0 < min_factor < 1 else 1
        log_mode = not (0 < min_factor and k * math.log(min_factor) > math.log(_FLOAT64_TINY))
        acc = torch.zeros(K, C, dtype=torch.float64, device=dev) if log_mode else \
            torch.ones(K, C, dtype=torch.float64, device=dev)
        off = torch.as_tensor(off_np, dtype=torch.float32, device=dev)
        slope = torch.as_tensor(slope_np, dtype=torch.float32, device=dev)
        a = float(self.params["a"])
        b = self.image_chunk
        # Entries (neuron, rank, image) grouped by image chunk, then neuron, ranks ascending.
        img = inds.T.reshape(-1).to(dev)
        nrn = torch.arange(K, device=dev).repeat_interleave(k)
        rnk = torch.arange(k, device=dev).repeat(K)
        chunk_of = torch.div(img, b, rounding_mode="floor")
        order = torch.argsort(chunk_of * K + nrn, stable=True)
        img, nrn, rnk, chunk_of = img[order], nrn[order], rnk[order], chunk_of[order]
        n_chunks = (images.shape[0] + b - 1) // b
        bounds = torch.searchsorted(chunk_of, torch.arange(n_chunks + 1, device=dev)).cpu().tolist()
        kb = min(self.neuron_chunk, K)
        part = torch.empty(kb, C, device=dev)
        buf = torch.empty(kb, C, device=dev)
        part64 = torch.empty(kb, C, dtype=torch.float64, device=dev)
        for c in range(n_chunks):
            e0, e1 = bounds[c], bounds[c + 1]
            if e0 == e1:
                continue
            i0 = c * b
            Q = torch.softmax(a * (images[i0:i0 + b] @ self.text.T), dim=1)
            c_nrn, c_img, c_rnk = nrn[e0:e1], img[e0:e1] - i0, rnk[e0:e1]
            counts = torch.bincount(c_nrn, minlength=K)
            first = torch.cumsum(counts, 0) - counts
            counts_host = counts.cpu()
            for k0 in range(0, K, kb):
                k1 = min(K, k0 + kb)
                cnt = counts_host[k0:k1]
                if int(cnt.max()) == 0:
                    continue
                perm_host = torch.argsort(cnt, descending=True, stable=True)
                sorted_cnt = cnt[perm_host].tolist()
                perm = perm_host.to(dev)
                inv_perm = torch.argsort(perm_host).to(dev)
                start = first[k0:k1][perm]
                rows = k1 - k0
                pv = part[:rows]
                pv.fill_(1.0)
                since_flush = 0
                active = rows
                for j in range(sorted_cnt[0]):
                    while active > 0 and sorted_cnt[active - 1] <= j:
                        active -= 1
                    pos = start[:active] + j
                    r = c_rnk[pos]
                    out = buf[:active]
                    torch.index_select(Q, 0, c_img[pos], out=out)
                    torch.addcmul(off[r].unsqueeze(1), slope[r].unsqueeze(1), out, out=out)
                    pv[:active].mul_(out)
                    since_flush += 1
                    if since_flush == group and j + 1 < sorted_cnt[0]:
                        self._flush(acc[k0:k1], pv, inv_perm, buf[:rows], part64[:rows], log_mode)
                        pv.fill_(1.0)
                        since_flush = 0
                self._flush(acc[k0:k1], pv, inv_perm, buf[:rows], part64[:rows], log_mode)
            del Q
        if not log_mode:
            torch.log(acc, out=acc)
        return acc

    @staticmethod
    def _flush(acc_rows: torch.Tensor, part: torch.Tensor, inv_perm: torch.Tensor, scratch: torch.Tensor,
               part64: torch.Tensor, log_mode: bool) -> None:
        """acc_rows[i] ∘= part[inv_perm[i]] (multiply, or add the log in log mode), no allocation."""
        torch.index_select(part, 0, inv_perm, out=scratch)
        part64.copy_(scratch)
        if log_mode:
            acc_rows.add_(torch.log(part64))
        else:
            acc_rows.mul_(part64)

    def _pmi_top(self, L: torch.Tensor, lam: float, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Subtract lam × prior (logsumexp over ALL neurons, accumulated chunk by chunk), keep top t."""
        K = L.shape[0]
        lse = None
        for s in range(0, K, self.neuron_chunk):
            part = torch.logsumexp(L[s:s + self.neuron_chunk], dim=0)
            lse = part if lse is None else torch.logaddexp(lse, part)
        prior = lam * (lse - math.log(K))
        ids, vals = [], []
        for s in range(0, K, self.neuron_chunk):
            i, v = top_concepts(L[s:s + self.neuron_chunk] - prior, t)
            ids.append(i)
            vals.append(v)
        return torch.cat(ids), torch.cat(vals)

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
        uniq, column = torch.unique(label, return_inverse=True)
        concept_scores = (images @ self.text[uniq].T).float().cpu().numpy()   # [N, U]
        return label_quality(concept_scores, column.cpu().numpy(), positives.cpu().numpy())


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
