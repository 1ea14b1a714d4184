"""StreamingLabeler: CLIP-Dissect labels from shards, never holding the [images × concepts] matrix.

Feed the shards of one layer in dataset order with ``add_shard(image_embeddings [n, d],
activations [n, K])``, then call ``finish()`` for a ``LayerLabels``. The parts:

- ``intake.ShardIntake`` keeps what is needed between shards (normalised image embeddings, each
  neuron's running top images, min/max, the cosine moments, or all activations when a function
  needs them: cos_similarity_cubed centres by the mean over all images, and rank_reorder /
  cos_similarity need the top 5% of N when ``num_images`` is not given);
- at ``finish`` one scoring family computes the concept scores, P = Î·T̂ᵀ one block at a time,
  reduced at once to each neuron's top concepts (no [K, C] array for the PMI family):
  ``pmi`` (soft_wpmi, wpmi), ``rank_reorder``, ``cosine`` (cos_similarity, cos_similarity_cubed);
- ``topk`` holds the one tie rule (lower image / concept index first), shared with the dense
  functions of ``similarity``; ``quality`` the AUC / p-value of each label;
- ``heldout.HeldOutRows`` keeps the held-out split's rows (``cdissect_common.evaluation``), on
  which every label gets its simulation scores (correlation with a 95% interval, AUPRC).

Two selections (``select``): ``similarity`` (the reference) feeds every image to the function
and labels each unit with its top-1; the held-out rows are kept in addition, so the scores are
in-sample for these labels. ``simulation`` feeds the function the selection split only (the
held-out rows never reach it), keeps ``simulation.SplitMoments`` of that split, and re-ranks
each unit's top ``candidates`` concepts by their correlation there minus ``rank_penalty`` per
place in the function's ranking (``simulation.rerank``); its scores are held-out. Top images
are then the selection split's, reported with their global indices.

Memory at finish is about N·d (embeddings) + N·tile (one Q tile) + K·tile (scores of the tile)
floats; neuron_chunk and concept_tile trade memory for speed on CPU (on CUDA tiles are larger).
``precision='float16'`` reproduces the reference's fp16 CLIP features (GPU runs): embeddings are
cast to float16 and back before normalising. Everything runs on ``device`` (cpu or cuda).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from cdissect_common import evaluation
from cdissect_common.vocabulary import PMI_FUNCTIONS, PRECISIONS, SELECTIONS

from cdissect_labeler import similarity as sim
from cdissect_labeler.budget import SCRATCH_BYTES
from cdissect_labeler.cosine import cos_cubed_top_concepts, cos_top_concepts
from cdissect_labeler.heldout import HeldOutRows
from cdissect_labeler.intake import RunningRange, ShardIntake, checked_tensor, normalise_embeddings
from cdissect_labeler.labels import LayerLabels
from cdissect_labeler.pmi import pmi_top_concepts
from cdissect_labeler.quality import label_quality, quality_positive_count
from cdissect_labeler.rank_reorder import rank_reorder_top_concepts
from cdissect_labeler.simulation import SplitMoments, rerank
from cdissect_labeler.topk import shard_top_candidates, top_concepts  # noqa: F401 (part of this module's API)


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
    per neuron are kept for ``finish(top_images=...)``. select: 'similarity' or 'simulation' (module
    doc), with candidates and rank_penalty for the latter; eval_fraction, eval_seed: the held-out
    split; auprc_alpha: the top share of held-out images that are a unit's AUPRC positives (at
    least the function's own top-set share of the probe set).
    """

    def __init__(self, function: str, params: dict[str, Any] | None, text_embeddings: Any,
                 device: str | torch.device | None = "cpu", precision: str = "float32",
                 neuron_chunk: int = 256, image_chunk: int | None = None,
                 num_images: int | None = None, max_top_images: int = 100, concept_tile: int = 512,
                 select: str = SELECTIONS[0], candidates: int = evaluation.SIMULATION_CANDIDATES,
                 rank_penalty: float = evaluation.SIMULATION_RANK_PENALTY,
                 eval_fraction: float = evaluation.EVAL_FRACTION, eval_seed: int = evaluation.EVAL_SEED,
                 auprc_alpha: float = evaluation.AUPRC_ALPHA) -> None:
        self.function = function
        self.params = sim.resolve_params(function, params)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        if neuron_chunk < 1:
            raise ValueError(f"neuron_chunk must be ≥ 1, got {neuron_chunk}.")
        if num_images is not None and num_images < 1:
            raise ValueError(f"num_images must be ≥ 1 when given, got {num_images}.")
        # The parameter ranges (vocabulary) keep every membership factor of the PMI functions > 0.
        self.device = sim.resolve_device(device)
        self.precision = precision
        self.neuron_chunk = int(neuron_chunk)
        self.num_images = num_images
        self.max_top_images = int(max_top_images)
        if concept_tile < 1:
            raise ValueError(f"concept_tile must be ≥ 1, got {concept_tile}.")
        self.concept_tile = int(concept_tile)
        T = checked_tensor(text_embeddings, "text_embeddings", 2)
        if T.shape[0] == 0:
            raise ValueError("text_embeddings has no rows: the concept set is empty.")
        self.text = normalise_embeddings(T, self.device, precision)     # [C, d] float32
        C = self.text.shape[0]
        self.image_chunk = int(image_chunk) if image_chunk else max(16, SCRATCH_BYTES // (4 * C))
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}.")
        self.select = select
        self.simulation = select == "simulation"
        self.candidates = evaluation.check_candidates(candidates)
        self.rank_penalty = evaluation.check_rank_penalty(rank_penalty)
        self.auprc_alpha = evaluation.check_alpha(auprc_alpha)
        self._heldout = HeldOutRows(eval_fraction, eval_seed, self.device, precision)
        # The function's images: all of them, or (simulation) those outside the held-out split.
        function_images = num_images
        if num_images is not None and self.simulation:
            function_images = num_images - evaluation.heldout_count(num_images, eval_fraction, eval_seed)
        if function in PMI_FUNCTIONS and function_images is not None and self.params["top_k"] > function_images:
            raise ValueError(f"{function} top_k={self.params['top_k']} exceeds the {function_images} images it scores"
                             f"{' (the selection split)' if self.simulation else ''}; lower top_k or probe with "
                             f"more images")
        keep_activations = function == "cos_similarity_cubed" or (
            function not in PMI_FUNCTIONS and num_images is None)
        self._intake = ShardIntake(self.text.shape[1], self.device, precision,
                                   0 if keep_activations else self._top_needed(function_images),
                                   keep_activations, moments=function == "cos_similarity")
        self._moments = SplitMoments(self.device) if self.simulation else None
        self._selection_index: list[np.ndarray] = []   # simulation: global index of each function row
        self._range = RunningRange()                   # simulation: both splits (the intake sees one)

    def _top_needed(self, num_images: int | None) -> int:
        """Top images to keep per neuron: the function's top set, the quality positives, and
        max_top_images for ``finish(top_images=...)``."""
        if self.function in PMI_FUNCTIONS:
            return max(int(self.params["top_k"]), self.max_top_images)
        assert num_images is not None
        need = quality_positive_count(self.function, self.params, num_images)
        if self.function == "rank_reorder":
            need = max(need, int(num_images * self.params["top_fraction"]))
        return max(need, self.max_top_images)

    @property
    def num_images_seen(self) -> int:
        """Images added so far."""
        return self._heldout.seen

    @property
    def heldout_images(self) -> int:
        """Images of the held-out split added so far (the scores' sample size)."""
        return self._heldout.n

    def add_shard(self, image_embeddings: Any, activations: Any) -> None:
        """Add the next shard (dataset order): CLIP image embeddings [n, d] and activations [n, K].

        The shard is checked once and each row routed once: the held-out rows are kept for the
        scores; the function gets every row (similarity; the held-out rows' normalised embeddings
        are then the intake's) or the selection split's rows only (simulation)."""
        I, A = self._intake.checked(image_embeddings, activations)
        held = self._heldout.next_mask(int(A.shape[0]))
        if not self.simulation:
            self._intake.add_checked(I, A)
            held_images = self._intake.images[-1][held.to(self.device)] if bool(held.any()) else I[:0]
        else:
            self._range.add(A.float())                         # as the intake and held-out rows hold it
            keep = ~held
            before = self._intake.n
            self._intake.add_checked(I[keep], A[keep])         # the function's rows
            if self._intake.n > before:
                self._moments.add(A[keep].to(self.device, torch.float32), self._intake.images[-1])
                self._selection_index.append(self._heldout.seen + np.flatnonzero(keep.numpy()))
            held_images = normalise_embeddings(I[held], self.device, self.precision)
        self._heldout.add_rows(held, held_images, A[held])

    def finish(self, top_concepts: int = 5, top_images: int = 10, quality: bool = True) -> LayerLabels:
        """Compute the labels of every neuron: top concepts with scores, top images, dead, quality,
        and the held-out simulation scores of each label."""
        N, K, C = self._intake.n, self._intake.K, self.text.shape[0]
        total = self._heldout.seen
        if self.simulation and N == 0 and total > 0:
            raise ValueError(f"all {total} images fell into the held-out split; the selection split is empty. "
                             "Use more images or a smaller eval fraction.")
        if N == 0 or K is None:
            raise ValueError("no shard was added; call add_shard before finish.")
        if self.num_images is not None and total != self.num_images:
            raise ValueError(f"num_images={self.num_images} was announced but {total} images were added; "
                             "pass the probe set's true size or leave num_images unset.")
        if not 1 <= top_concepts <= C:
            raise ValueError(f"top_concepts must be between 1 and the {C} concepts, got {top_concepts}.")
        if top_images < 1:
            raise ValueError(f"top_images must be ≥ 1, got {top_images}.")
        with torch.no_grad():
            images = self._intake.all_images()
            top_vals, top_idx = self._intake.top(self._top_needed(N))
            if top_images > top_idx.shape[0]:
                raise ValueError(f"top_images={top_images} but only {top_idx.shape[0]} are kept per neuron; "
                                 f"create the StreamingLabeler with max_top_images≥{top_images}.")
            dead = self._dead()
            t = min(C, max(top_concepts, self.candidates)) if self.simulation else top_concepts
            ids, scores = self._scores(images, top_vals, top_idx, t)
            ranks = torch.arange(1, t + 1, device=ids.device).expand(K, t)
            if self.simulation:
                ids, scores, ranks = self._rerank(ids, scores, ranks)
            ids, scores, ranks = ids[:, :top_concepts], scores[:, :top_concepts], ranks[:, :top_concepts]
            auc = np.full(K, 0.5)
            pval = np.ones(K)
            if quality:
                n_pos = quality_positive_count(self.function, self.params, N)
                auc, pval = self._quality(images, ids[:, 0], top_idx[:n_pos].T)
            dead_np = dead.cpu().numpy()
            auc[dead_np], pval[dead_np] = 0.5, 1.0
            shown = top_idx[:top_images].T.cpu().numpy()
            if self.simulation:                          # function rows → global image indices
                shown = np.concatenate(self._selection_index)[shown]
            share = quality_positive_count(self.function, self.params, total) / total
            n_pos = evaluation.positives_count(max(1, self._heldout.n), self.auprc_alpha, share)
            held, _, _ = self._heldout.score(self.text, ids[:, 0].cpu().numpy(), n_pos)
            return LayerLabels(concept_ids=ids.cpu().numpy(), scores=scores.float().cpu().numpy(),
                               top_images=shown, dead=dead_np, quality_auc=auc, quality_p=pval,
                               similarity_rank=ranks.cpu().numpy(), correlation=held.correlation,
                               correlation_low=held.correlation_low, correlation_high=held.correlation_high,
                               auprc=held.auprc, auprc_base=held.auprc_base, heldout_constant=held.constant)

    def _dead(self) -> torch.Tensor:
        """bool [K]: constant over every image added (with simulation, both splits together)."""
        return self._range.dead() if self.simulation else self._intake.dead()

    def _rerank(self, ids: torch.Tensor, scores: torch.Tensor,
                ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """simulation: the first ``candidates`` columns re-ordered by ``simulation.rerank`` (correlation on
        the selection split minus rank_penalty per place); later columns keep the function's order."""
        J = min(self.candidates, ids.shape[1])
        correlation = self._moments.correlations(self.text, ids[:, :J], chunk=self.neuron_chunk)
        order = torch.as_tensor(rerank(correlation, self.rank_penalty), device=ids.device)
        reordered = [torch.gather(x[:, :J], 1, order) for x in (ids, scores, ranks)]
        return tuple(torch.cat([r, x[:, J:]], dim=1) for r, x in zip(reordered, (ids, scores, ranks)))

    def _scores(self, images: torch.Tensor, top_vals: torch.Tensor, top_idx: torch.Tensor,
                t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(concept ids, scores) [K, t] from the scoring family of the function."""
        f = self.function
        if f in PMI_FUNCTIONS:
            k = int(self.params["top_k"])
            if k > images.shape[0]:
                raise ValueError(f"top_k={k} exceeds the {images.shape[0]} probe images; lower top_k.")
            return pmi_top_concepts(f, self.params, images, self.text, top_idx[:k], t, self.concept_tile,
                                    self.neuron_chunk)
        if f == "rank_reorder":
            return rank_reorder_top_concepts(self.params, images, self.text, top_vals, top_idx, t,
                                             self.neuron_chunk)
        if f == "cos_similarity":
            return cos_top_concepts(self._intake.moment_AI, self._intake.moment_AA, images, self.text,
                                    self._intake.dead(), t, self.neuron_chunk)
        return cos_cubed_top_concepts(self._intake.all_activations(), images, self.text, self._intake.dead(),
                                      float(self.params["min_norm"]), self.image_chunk, t, self.neuron_chunk)

    def _quality(self, images: torch.Tensor, label: torch.Tensor,
                 positives: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Label quality per unit, a block of distinct label concepts at a time (bounded memory)."""
        K = label.shape[0]
        uniq, column = torch.unique(label, return_inverse=True)
        column_np, positives_np = column.cpu().numpy(), positives.cpu().numpy()
        auc, pval = np.full(K, 0.5), np.ones(K)
        block = max(1, SCRATCH_BYTES // (16 * images.shape[0]))
        for u0 in range(0, uniq.shape[0], block):
            units = np.flatnonzero((column_np >= u0) & (column_np < u0 + block))
            scores = (images @ self.text[uniq[u0:u0 + block]].T).float().cpu().numpy()   # [N, block]
            auc[units], pval[units] = label_quality(scores, column_np[units] - u0, positives_np[units])
        return auc, pval


__all__ = ["StreamingLabeler", "shard_top_candidates", "top_concepts"]
