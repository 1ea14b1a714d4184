"""The named choices every part of cdissect agrees on, each written down once (torch-free).

The wire (``cdissect.v1`` messages) and ``job.yaml`` carry these as plain strings; the CLI
validates flags and job files against these tuples, and the services check requests against the
same ones, so a value added here is accepted everywhere (tests/unit/test_vocabulary.py fails when
a part keeps a list of its own). Defaults of a job are in ``cdissect_cli.jobspec.JobSpec``.

The similarity parameters' types and ranges are here too (``SIMILARITY_PARAM_RANGES``), with the
one check the CLI's job spec, the labeler service and ``StreamingLabeler`` all use
(``check_similarity_params``): a bad value gets the same message from each.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Precision of the CLIP features the labeler scores with ("float16" mimics the reference's GPU fp16).
PRECISIONS: tuple[str, ...] = ("float32", "float16")
# Precision of the target's forward pass: the reference's float32, or bf16 autocast (speed on GPUs).
TARGET_PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
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




@dataclass(frozen=True)
class ParamRange:
    """The values one similarity parameter takes: an integer or a real number, finite, in an
    interval (None = unbounded on that side; ``*_open`` = the bound itself is excluded)."""

    integer: bool
    meaning: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def text(self) -> str:
        """How a message states the rule, e.g. ``an integer ≥ 1``, ``a number in (0, 1]``."""
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return (f"{kind} in {'(' if self.low_open else '['}{_shown(self.low)}, "
                    f"{_shown(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '≥'} {_shown(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '≤'} {_shown(self.high)}"
        return kind

    def holds(self, value: float) -> bool:
        """Whether a finite ``value`` lies in the interval."""
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))


# Every similarity parameter's type and range (a name means the same in every function that has
# it). An integer parameter's default is an int and a real one's a float: the labeler's artifact
# keys hold the resolved values, so the types must not change (tested).
SIMILARITY_PARAM_RANGES: dict[str, ParamRange] = {
    "top_k": ParamRange(True, "how many top-activating images of a unit are scored", low=1),
    "a": ParamRange(False, "the sharpness of the softmax over concepts", low=0, low_open=True),
    "lam": ParamRange(False, "the weight of the concept prior that is subtracted", low=0),
    "min_prob": ParamRange(False, "the floor added to a probability before its log", low=0, high=1, low_open=True),
    "p_start": ParamRange(False, "the membership probability of a unit's top image", low=0, high=1),
    "p_end": ParamRange(False, "the membership probability of a unit's top_k-th image", low=0, high=1),
    "p": ParamRange(False, "the exponent of the ranking error", low=0, low_open=True),
    "top_fraction": ParamRange(False, "the share of all images that are a unit's top images", low=0, high=1,
                               low_open=True),
    "scale_p": ParamRange(False, "the exponent of the mean CLIP score that scales the error", low=0),
    "seed": ParamRange(True, "the seed of the baseline permutations", low=0, high=2 ** 32 - 1),
    "min_norm": ParamRange(False, "the smallest norm a column is divided by", low=0, low_open=True),
}


def _shown(value: Any) -> str:
    """A number as a user typed it (0.0 from the wire or a flag shows as 0); anything else as repr."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def check_similarity_function(function: str) -> str:
    """``function`` if it is a similarity function; a ValueError listing them otherwise."""
    if function not in SIMILARITY_DEFAULTS:
        raise ValueError(f"unknown similarity function {function!r}; choose one of: {', '.join(SIMILARITY_FUNCTIONS)}")
    return function


def check_similarity_param(function: str, name: str, value: Any) -> int | float:
    """One parameter of ``function`` as its type (int or float), checked against its range.

    Numbers and numeric strings (YAML reads ``1e-7`` as one) are accepted; booleans, NaN,
    infinities, a fraction for an integer parameter or a value outside the range are a ValueError
    that names the parameter, the rule, the value given and the default.
    """
    defaults = SIMILARITY_DEFAULTS[check_similarity_function(function)]
    if name not in defaults:
        raise ValueError(f"similarity parameter {name!r} does not apply to {function}; its parameters are: "
                         f"{', '.join(defaults) or 'none'}")
    rule = SIMILARITY_PARAM_RANGES[name]
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number) or (rule.integer and not number.is_integer()) or not rule.holds(number):
        raise ValueError(f"similarity parameter {name} of {function} must be {rule.text()} ({rule.meaning}), "
                         f"got {_shown(value)}; default {defaults[name]}")
    return int(number) if rule.integer else number


def check_similarity_params(function: str, params: Mapping[str, Any]) -> dict[str, int | float]:
    """The given parameters of ``function``, each checked (``check_similarity_param``); no defaults added."""
    check_similarity_function(function)
    return {str(name): check_similarity_param(function, str(name), value) for name, value in params.items()}


def resolve_similarity_params(function: str, params: Mapping[str, Any] | None) -> dict[str, int | float]:
    """Every parameter of ``function``: its defaults, updated with the checked ``params``."""
    return {**SIMILARITY_DEFAULTS[check_similarity_function(function)],
            **check_similarity_params(function, params or {})}


def choices_text(values: tuple[str, ...]) -> str:
    """``a | b | c``: how help texts list a vocabulary."""
    return " | ".join(values)


__all__ = ["PRECISIONS", "TARGET_PRECISIONS", "POOLINGS", "TOKEN_POOLINGS", "BAD_IMAGE_POLICIES", "SAE_ACTIVATIONS",
           "SIMILARITY_DEFAULTS", "SIMILARITY_FUNCTIONS", "PMI_FUNCTIONS", "RANK_FUNCTIONS", "COSINE_FUNCTIONS",
           "SELECTIONS", "ParamRange", "SIMILARITY_PARAM_RANGES", "check_similarity_function", "check_similarity_param",
           "check_similarity_params", "resolve_similarity_params", "choices_text"]
