"""The held-out split and the settings of label selection and simulation scores (numpy only).

A run scores every label by how well the label's CLIP score *simulates* the unit (Pearson
correlation, average precision; ``cdissect_labeler.simulation``) on a held-out part of the probe
set. Both the CLI (to refuse a split that is too small before any work) and the labeler (to route
each image) need the same split, so it is defined here, once:

- image i (its global index in the probe set) is held out when ``u(seed, i) < fraction``, where
  u is a splitmix64 hash of (seed, i) mapped to [0, 1). The split depends on nothing but the
  index, the fraction and the seed: shards of any size, any order of arrival and any number of
  labeler replicas agree on it, and the CLI can count it from the probe-set size alone;
- the held-out count is therefore close to, not exactly, fraction × N (3000 images, 0.2, seed 0:
  616 held out).

``--select similarity`` (the reference) labels with the similarity function's top-1 on all images;
``--select simulation`` runs the similarity function on the selection split only and re-ranks its
top ``candidates`` concepts by Pearson correlation on that split, minus ``rank_penalty`` per place
in the similarity's ranking (defaults chosen by measurement on the shapes world; README).
"""
from __future__ import annotations

import math

import numpy as np

EVAL_FRACTION = 0.2          # default share of the probe set held out for the scores
EVAL_SEED = 0                # default seed of the split
MAX_EVAL_FRACTION = 0.5      # a larger held-out share would leave the selection the smaller part
MIN_EVAL_IMAGES = 20         # fewer held-out images give no usable correlation or AUPRC
AUPRC_ALPHA = 0.005          # top fraction of held-out images that are a unit's positives (NeuronEval)
SIMULATION_CANDIDATES = 25   # similarity top-N re-ranked by --select simulation
SIMULATION_RANK_PENALTY = 0.005  # correlation a candidate must gain per place it climbs

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def check_eval_fraction(fraction: float) -> float:
    """The fraction as a float; outside (0, 0.5] is a ValueError naming the allowed range."""
    value = float(fraction)
    if not (0.0 < value <= MAX_EVAL_FRACTION) or math.isnan(value):
        raise ValueError(f"eval fraction must be in (0, {MAX_EVAL_FRACTION}], got {fraction}; it is the share of "
                         f"the probe set held out for the simulation scores (default {EVAL_FRACTION})")
    return value


def check_candidates(candidates: int) -> int:
    """The candidate count of --select simulation; below 1 is a ValueError."""
    value = int(candidates)
    if value < 1:
        raise ValueError(f"the simulation selection needs at least 1 candidate concept, got {candidates}; "
                         f"pass a count ≥ 1 (default {SIMULATION_CANDIDATES})")
    return value


def check_rank_penalty(penalty: float) -> float:
    """The per-place rank penalty; negative or not finite is a ValueError."""
    value = float(penalty)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"the rank penalty must be a finite number ≥ 0, got {penalty} (default {SIMULATION_RANK_PENALTY})")
    return value


def check_alpha(alpha: float) -> float:
    """The AUPRC top fraction; outside (0, 1) is a ValueError."""
    value = float(alpha)
    if not (0.0 < value < 1.0):
        raise ValueError(f"the AUPRC fraction alpha must be in (0, 1), got {alpha} (default {AUPRC_ALPHA})")
    return value


def _uniform(seed: int, index: np.ndarray) -> np.ndarray:
    """splitmix64(seed·golden + index) mapped to [0, 1): a fixed pseudo-random number per image."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + index.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2 ** 53)


def heldout_mask(start: int, count: int, fraction: float, seed: int) -> np.ndarray:
    """bool [count]: which of the images start .. start+count-1 (global indices) are held out."""
    if start < 0 or count < 0:
        raise ValueError(f"image range must be non-negative, got start={start}, count={count}")
    fraction = check_eval_fraction(fraction)
    return _uniform(int(seed), np.arange(start, start + count, dtype=np.int64)) < fraction


def heldout_count(num_images: int, fraction: float, seed: int, block: int = 1 << 20) -> int:
    """How many of a probe set's first num_images images are held out."""
    return int(sum(int(heldout_mask(s, min(block, num_images - s), fraction, seed).sum())
                   for s in range(0, num_images, block)))


def check_heldout_split(num_images: int, fraction: float, seed: int) -> int:
    """The held-out count; fewer than MIN_EVAL_IMAGES is a ValueError that names the fix."""
    count = heldout_count(num_images, fraction, seed)
    if count < MIN_EVAL_IMAGES:
        raise ValueError(f"the held-out split has {count} of the {num_images} probe images (fraction {fraction}, "
                         f"seed {seed}); the simulation scores need at least {MIN_EVAL_IMAGES}. Raise "
                         f"--eval-fraction (at most {MAX_EVAL_FRACTION}) or use a larger probe set")
    return count


def positives_count(num_heldout: int, alpha: float, min_fraction: float = 0.0) -> int:
    """A unit's positives among the held-out images: its top max(alpha, min_fraction) share, ≥ 1.

    min_fraction is the share of images the similarity function itself treats as a unit's top set
    (soft-WPMI: top_k / N), so the AUPRC never asks about fewer images than the function used."""
    share = max(check_alpha(alpha), float(min_fraction))
    return max(1, min(num_heldout, math.ceil(share * num_heldout - 1e-9)))
