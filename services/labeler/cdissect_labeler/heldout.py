"""The held-out rows of a layer's shards, and the simulation scores of labels on them.

Shards arrive in dataset order; ``HeldOutRows.add_shard`` routes each row by the seeded split of
``cdissect_common.evaluation`` (a fixed function of the image's global index) and keeps the
held-out ones: their normalised image embeddings (on the device) and activations (on the host,
float32: eval_fraction × N × K × 4 bytes, 33 MB at 20000 images × 2048 units). ``score`` then
computes each unit's label scores on them (``simulation.heldout_scores``), and optionally the AUC
and Mann-Whitney p of the label for the same positives (``quality.label_quality``).

The streaming labeler keeps one for its reported scores; ``EvaluateLabels`` keeps one to score
labels that come from elsewhere.
"""
from __future__ import annotations

import numpy as np
import torch
from cdissect_common.evaluation import check_eval_fraction, heldout_mask

from cdissect_labeler.budget import SCRATCH_BYTES
from cdissect_labeler.intake import normalise_embeddings
from cdissect_labeler.quality import label_quality
from cdissect_labeler.simulation import HeldOutScores, heldout_scores


class HeldOutRows:
    """Keeps a layer's held-out rows (module doc); ``seen`` counts every row routed so far."""

    def __init__(self, fraction: float, seed: int, device: torch.device, precision: str) -> None:
        self.fraction = check_eval_fraction(fraction)
        self.seed = int(seed)
        self.device = device
        self.precision = precision
        self.seen = 0
        self._images: list[torch.Tensor] = []
        self._acts: list[torch.Tensor] = []

    @property
    def n(self) -> int:
        """Held-out rows kept so far."""
        return sum(int(a.shape[0]) for a in self._acts)

    def next_mask(self, n: int) -> torch.Tensor:
        """bool [n] on the CPU: which of the next n rows (global indices seen .. seen+n-1) are held out."""
        return torch.from_numpy(heldout_mask(self.seen, n, self.fraction, self.seed))

    def add_rows(self, mask: torch.Tensor, images: torch.Tensor, acts: torch.Tensor) -> None:
        """Move past the len(mask) rows that ``next_mask`` routed, keeping the held-out ones:
        images [h, d] already normalised (on the device) and acts [h, K], h = mask.sum()."""
        self.seen += int(mask.shape[0])
        if images.shape[0]:
            self._images.append(images)
            self._acts.append(acts.detach().to("cpu", torch.float32))

    def add_shard(self, images: torch.Tensor, acts: torch.Tensor) -> None:
        """Route the next shard's rows (checked tensors [n, d] and [n, K]); keep the held-out ones."""
        mask = self.next_mask(int(acts.shape[0]))
        self.add_rows(mask, normalise_embeddings(images[mask], self.device, self.precision), acts[mask])

    def activations(self) -> torch.Tensor:
        """[n, K] held-out activations on the host (concatenated once, then kept so)."""
        if len(self._acts) > 1:
            self._acts = [torch.cat(self._acts, dim=0)]
        return self._acts[0]

    def images(self) -> torch.Tensor:
        """[n, d] normalised held-out image embeddings on the device."""
        if len(self._images) > 1:
            self._images = [torch.cat(self._images, dim=0)]
        return self._images[0]

    def score(self, text: torch.Tensor, label_ids: np.ndarray, n_positives: int,
              with_auc: bool = False) -> tuple[HeldOutScores, np.ndarray | None, np.ndarray | None]:
        """Scores of each unit's label on the held-out rows: (scores, auc, p) — auc and p only
        with ``with_auc`` (for the positives the AUPRC used: the unit's top n_positives held-out
        images above its minimum).

        text [L, d]: normalised label embeddings on the device; label_ids [K]: unit k's row of
        text, -1 for a unit without a label (scored as constant)."""
        label_ids = np.asarray(label_ids, dtype=np.int64)
        K = label_ids.shape[0]
        if not self._acts:            # no held-out image (entry points refuse this up front): defined defaults
            zeros = np.zeros(K)
            return (HeldOutScores(correlation=zeros, correlation_low=zeros - 1.0, correlation_high=zeros + 1.0,
                                  auprc=zeros.copy(), auprc_base=zeros.copy(), constant=np.ones(K, dtype=bool)),
                    np.full(K, 0.5) if with_auc else None, np.ones(K) if with_auc else None)
        acts = self.activations().numpy()
        images = self.images()
        used = np.unique(label_ids[label_ids >= 0])
        column = np.full(label_ids.shape, -1, dtype=np.int64)
        column[label_ids >= 0] = np.searchsorted(used, label_ids[label_ids >= 0])
        label_scores = np.empty((acts.shape[0], used.size), dtype=np.float32)
        block = max(1, SCRATCH_BYTES // (4 * max(1, acts.shape[0])))
        for u0 in range(0, used.size, block):
            rows = torch.as_tensor(used[u0:u0 + block], device=self.device)
            label_scores[:, u0:u0 + block] = (images @ text[rows].T).float().cpu().numpy()
        scores = heldout_scores(acts, label_scores, column, n_positives)
        if not with_auc:
            return scores, None, None
        auc, pval = np.full(column.shape, 0.5), np.ones(column.shape)
        live = np.flatnonzero((column >= 0) & ~scores.constant)
        if live.size:
            auc[live], pval[live] = label_quality(label_scores, column[live], scores.positives[:, live].T,
                                                  scores.positive_counts[live])
        return scores, auc, pval


__all__ = ["HeldOutRows"]
