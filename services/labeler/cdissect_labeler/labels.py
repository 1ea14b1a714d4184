"""LayerLabels: what the labeler produces for one layer, as plain arrays.

Per neuron k: its top concepts (indices into the concept set's word list) with their similarity
scores, best first, and each one's place in the similarity function's own ranking; the global
indices of its most activating probe images, most activating first; whether it is dead (constant
activation over the probe set); a label-quality figure (AUC and a one-sided Mann-Whitney p-value,
see ``cdissect_labeler.quality``); and the label's simulation scores on the held-out split
(correlation with its 95% interval, AUPRC with its chance level, see ``simulation``). Arrays only,
so the servicer can store them as safetensors with ``to_arrays`` and read them back with
``from_arrays``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_FIELDS = {
    "concept_ids": np.int64,
    "scores": np.float32,
    "top_images": np.int64,
    "dead": np.bool_,
    "quality_auc": np.float32,
    "quality_p": np.float32,
    "similarity_rank": np.int32,
    "correlation": np.float32,
    "correlation_low": np.float32,
    "correlation_high": np.float32,
    "auprc": np.float32,
    "auprc_base": np.float32,
    "heldout_constant": np.bool_,
}
_PER_UNIT = ("dead", "quality_auc", "quality_p", "correlation", "correlation_low", "correlation_high", "auprc",
             "auprc_base", "heldout_constant")


@dataclass
class LayerLabels:
    """Labels of the K neurons of one layer.

    concept_ids [K, t] int64 and scores [K, t] float32: top-t concepts, best first (scores are
    finite, also for dead neurons); top_images [K, m] int64: global image indices, most activating
    first (ties: lower index first); dead [K] bool; quality_auc [K] and quality_p [K] float32
    (dead units get AUC 0.5 and p 1: their top images are an arbitrary tie, not a signal).
    similarity_rank [K, t] int32: 1-based place of each top concept in the similarity's ranking
    (1..t for the reference's selection; a re-ranked label shows where the similarity had it).
    correlation, correlation_low, correlation_high, auprc, auprc_base [K] float32 and
    heldout_constant [K] bool: the held-out scores (constant units: r 0 in [-1, 1], AUPRC = chance).
    Left out, these take the "not scored" values: ranks 1..t, r 0 in [-1, 1], AUPRC 0, constant.
    """

    concept_ids: np.ndarray
    scores: np.ndarray
    top_images: np.ndarray
    dead: np.ndarray
    quality_auc: np.ndarray
    quality_p: np.ndarray
    similarity_rank: np.ndarray | None = None
    correlation: np.ndarray | None = None
    correlation_low: np.ndarray | None = None
    correlation_high: np.ndarray | None = None
    auprc: np.ndarray | None = None
    auprc_base: np.ndarray | None = None
    heldout_constant: np.ndarray | None = None

    def __post_init__(self) -> None:
        K, t = np.shape(self.concept_ids)[0], np.shape(self.concept_ids)[-1]
        unscored = {"similarity_rank": np.tile(np.arange(1, t + 1), (K, 1)), "correlation": np.zeros(K),
                    "correlation_low": np.full(K, -1.0), "correlation_high": np.ones(K), "auprc": np.zeros(K),
                    "auprc_base": np.zeros(K), "heldout_constant": np.ones(K, dtype=bool)}
        for name, value in unscored.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name, dtype in _FIELDS.items():
            value = np.asarray(getattr(self, name))
            object.__setattr__(self, name, np.ascontiguousarray(value.astype(dtype, copy=False)))
        K = self.concept_ids.shape[0] if self.concept_ids.ndim else -1
        for name in ("concept_ids", "scores", "top_images"):
            arr = getattr(self, name)
            if arr.ndim != 2 or arr.shape[0] != K:
                raise ValueError(f"LayerLabels.{name} must be [K, n] with K={K} neurons, got {arr.shape}.")
        for name in ("scores", "similarity_rank"):
            if getattr(self, name).shape != self.concept_ids.shape:
                raise ValueError(f"LayerLabels.{name} {getattr(self, name).shape} must match concept_ids "
                                 f"{self.concept_ids.shape}.")
        for name in _PER_UNIT:
            if getattr(self, name).shape != (K,):
                raise ValueError(f"LayerLabels.{name} must be [K]=[{K}], got {getattr(self, name).shape}.")
        for name in ("scores", "correlation", "correlation_low", "correlation_high", "auprc", "auprc_base"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"LayerLabels.{name} contains NaN or infinity; it must be finite.")

    @property
    def num_units(self) -> int:
        """K, the number of neurons labelled."""
        return int(self.concept_ids.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fields as a name → array dict (safetensors-ready, contiguous, fixed dtypes)."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "LayerLabels":
        """Rebuild from ``to_arrays`` output; a missing field is an error naming it."""
        missing = [name for name in _FIELDS if name not in arrays]
        if missing:
            raise ValueError(f"label arrays lack {', '.join(missing)}; expected the keys {', '.join(_FIELDS)}.")
        return cls(**{name: np.asarray(arrays[name]) for name in _FIELDS})

    def words(self, vocabulary: list[str]) -> list[list[str]]:
        """Top concepts as words from the concept set the labels index."""
        if self.concept_ids.size and int(self.concept_ids.max()) >= len(vocabulary):
            raise ValueError(f"labels index concept {int(self.concept_ids.max())} but the vocabulary has "
                             f"{len(vocabulary)} words; use the concept set these labels were made with.")
        return [[vocabulary[int(i)] for i in row] for row in self.concept_ids]
