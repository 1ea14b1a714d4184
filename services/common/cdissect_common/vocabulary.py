"""The named choices every part of cdissect agrees on, each written down once (torch-free).

The wire (``cdissect.v1`` messages) and ``job.yaml`` carry these as plain strings; the CLI
validates flags and job files against these tuples, and the services check requests against the
same ones, so a value added here is accepted everywhere (tests/unit/test_vocabulary.py fails when
a part keeps a list of its own). Defaults of a job are in ``cdissect_cli.jobspec.JobSpec``.
"""
from __future__ import annotations

from typing import Any

# Precision of the CLIP features the labeler scores with ("float16" mimics the reference's GPU fp16).
PRECISIONS: tuple[str, ...] = ("float32", "float16")
# Pooling of conv maps over H, W (the reference's default: avg).
POOLINGS: tuple[str, ...] = ("avg", "max")
# Pooling of ViT token sequences [B, T, D] (the reference's default: cls).
TOKEN_POOLINGS: tuple[str, ...] = ("cls", "mean", "patch_mean")
# What to do with an unreadable probe image: fail naming it, or skip and count it.
BAD_IMAGE_POLICIES: tuple[str, ...] = ("error", "skip")
# Activation of a sparse autoencoder's latents (`--features sae:PATH[:ACTIVATION]`); ReLU by default.
SAE_ACTIVATIONS: tuple[str, ...] = ("relu", "topk", "jumprelu")

# Similarity functions with their parameters and defaults (names and values as in the
# reference's similarity.py; min_norm is Label-free CBM's). The first one is the default.
SIMILARITY_DEFAULTS: dict[str, dict[str, Any]] = {
    "soft_wpmi": dict(top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97),
    "wpmi": dict(top_k=28, a=2.0, lam=0.6, min_prob=1e-7),
    "rank_reorder": dict(p=3.0, top_fraction=0.05, scale_p=0.5, seed=0),
    "cos_similarity": {},
    "cos_similarity_cubed": dict(min_norm=1e-3),
}
SIMILARITY_FUNCTIONS: tuple[str, ...] = tuple(SIMILARITY_DEFAULTS)
# The scoring families, one labeler module each (together they hold every function once):
# PMI-type functions score over each neuron's top_k images; cosine-type ones over all images.
PMI_FUNCTIONS: tuple[str, ...] = ("soft_wpmi", "wpmi")
RANK_FUNCTIONS: tuple[str, ...] = ("rank_reorder",)
COSINE_FUNCTIONS: tuple[str, ...] = ("cos_similarity", "cos_similarity_cubed")

# How each unit's label is chosen: the similarity function's top-1 (the reference, the default) or
# its top candidates re-ranked by how well they simulate the unit (cdissect_common.evaluation).
SELECTIONS: tuple[str, ...] = ("similarity", "simulation")


def choices_text(values: tuple[str, ...]) -> str:
    """``a | b | c``: how help texts list a vocabulary."""
    return " | ".join(values)


__all__ = ["PRECISIONS", "POOLINGS", "TOKEN_POOLINGS", "BAD_IMAGE_POLICIES", "SAE_ACTIVATIONS", "SIMILARITY_DEFAULTS",
           "SIMILARITY_FUNCTIONS", "PMI_FUNCTIONS", "RANK_FUNCTIONS", "COSINE_FUNCTIONS", "SELECTIONS",
           "choices_text"]
