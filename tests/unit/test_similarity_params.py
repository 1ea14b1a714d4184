"""Similarity parameters are checked in one place, cdissect_common.vocabulary, for type and range.

Before: `--param top_k=0` or `-5` passed the CLI and the labeler and failed deep in numpy;
`top_k=2.5` was silently truncated to 2. Now the CLI's job spec, the labeler's parameter
resolution (which the service and StreamingLabeler use) and the vocabulary give the same
ValueError message, which names the parameter, what it must be, the value and the default.
"""
from __future__ import annotations

import math

import pytest
import torch

from cdissect_cli.errors import SpecError
from cdissect_cli.jobspec import load_spec_file, parse_param_flags, resolve_spec
from cdissect_common import vocabulary as voc
from cdissect_labeler import similarity
from cdissect_labeler.streaming import StreamingLabeler

BAD = [
    ("soft_wpmi", "top_k", 0, "an integer ≥ 1"),
    ("soft_wpmi", "top_k", -5, "an integer ≥ 1"),
    ("soft_wpmi", "top_k", 2.5, "an integer ≥ 1"),
    ("wpmi", "top_k", True, "an integer ≥ 1"),
    ("wpmi", "top_k", "many", "an integer ≥ 1"),
    ("soft_wpmi", "a", 0, "a number > 0"),
    ("soft_wpmi", "a", math.nan, "a number > 0"),
    ("wpmi", "lam", -1, "a number ≥ 0"),
    ("wpmi", "lam", math.inf, "a number ≥ 0"),
    ("soft_wpmi", "min_prob", 0, "a number in (0, 1]"),
    ("soft_wpmi", "p_start", 1.5, "a number in [0, 1]"),
    ("soft_wpmi", "p_end", -0.1, "a number in [0, 1]"),
    ("rank_reorder", "p", 0, "a number > 0"),
    ("rank_reorder", "top_fraction", 0, "a number in (0, 1]"),
    ("rank_reorder", "top_fraction", 1.5, "a number in (0, 1]"),
    ("rank_reorder", "scale_p", -1, "a number ≥ 0"),
    ("rank_reorder", "seed", -1, "an integer in [0, 4294967295]"),
    ("rank_reorder", "seed", 0.5, "an integer in [0, 4294967295]"),
    ("cos_similarity_cubed", "min_norm", 0, "a number > 0"),
]


def _message(function: str, name: str, value: object) -> str:
    with pytest.raises(ValueError) as info:
        voc.check_similarity_params(function, {name: value})
    return str(info.value)


@pytest.mark.parametrize("function, name, value, rule", BAD)
def test_a_bad_value_gets_one_message_everywhere(function: str, name: str, value: object, rule: str) -> None:
    message = _message(function, name, value)
    default = voc.SIMILARITY_DEFAULTS[function][name]
    assert name in message and function in message and rule in message and f"default {default}" in message
    with pytest.raises(SpecError) as cli:
        resolve_spec(overrides={"similarity_function": function, "similarity_params": {name: value}})
    assert str(cli.value) == message
    with pytest.raises(ValueError) as labeler:
        similarity.resolve_params(function, {name: value})
    assert str(labeler.value) == message
    with pytest.raises(ValueError) as streaming:
        StreamingLabeler(function, {name: value}, torch.randn(3, 4), num_images=50)
    assert str(streaming.value) == message


def test_the_message_shows_the_number_as_given() -> None:
    assert "got 0;" in _message("soft_wpmi", "top_k", 0.0)       # --param top_k=0 arrives as 0.0
    assert "got 2.5;" in _message("soft_wpmi", "top_k", 2.5)
    assert "got 'many';" in _message("soft_wpmi", "top_k", "many")


def test_unknown_names_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="'p' does not apply to soft_wpmi; its parameters are: top_k, a"):
        voc.check_similarity_params("soft_wpmi", {"p": 3})
    with pytest.raises(ValueError, match="does not apply to cos_similarity; its parameters are: none"):
        voc.check_similarity_params("cos_similarity", {"top_k": 3})
    with pytest.raises(ValueError, match="unknown similarity function 'cosine'; choose one of: soft_wpmi"):
        voc.check_similarity_params("cosine", {})


def test_every_parameter_has_a_range_that_holds_its_default_with_the_defaults_type() -> None:
    for function, defaults in voc.SIMILARITY_DEFAULTS.items():
        for name, default in defaults.items():
            rule = voc.SIMILARITY_PARAM_RANGES[name]
            assert isinstance(default, int) == rule.integer, (function, name)    # content keys keep int/float
            checked = voc.check_similarity_params(function, {name: default})[name]
            assert checked == default and type(checked) is type(default)
    assert set(voc.SIMILARITY_PARAM_RANGES) == {n for d in voc.SIMILARITY_DEFAULTS.values() for n in d}


@pytest.mark.parametrize("function, params", [
    ("soft_wpmi", {"top_k": 1, "lam": 0, "p_start": 1, "p_end": 0, "min_prob": 1}),
    ("soft_wpmi", {"top_k": 20.0, "a": "1e-3"}),                 # 20.0 from --param; "1e-3" as YAML reads 1e-3
    ("rank_reorder", {"top_fraction": 1, "scale_p": 0, "seed": 4294967295}),
])
def test_values_on_the_bounds_and_numeric_forms_are_accepted(function: str, params: dict) -> None:
    checked = voc.check_similarity_params(function, params)
    assert set(checked) == set(params)
    if "top_k" in checked:
        assert type(checked["top_k"]) is int
    assert similarity.resolve_params(function, params) == {**voc.SIMILARITY_DEFAULTS[function], **checked}


def test_the_job_spec_file_and_the_param_flag_are_checked_the_same_way(tmp_path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("similarity: {function: wpmi, params: {top_k: 2.5}}\n")
    with pytest.raises(SpecError, match="top_k of wpmi must be an integer ≥ 1"):
        resolve_spec(load_spec_file(path))
    with pytest.raises(SpecError, match="top_k of soft_wpmi must be an integer ≥ 1"):
        resolve_spec(overrides={"similarity_params": parse_param_flags(["top_k=-5"])})
    path.write_text("similarity: {function: wpmi, params: {min_prob: 1e-6}}\n")    # YAML reads 1e-6 as a string
    assert resolve_spec(load_spec_file(path)).similarity_params == {"min_prob": 1e-6}


def test_the_labeler_refuses_a_top_k_over_the_images_before_any_work() -> None:
    with pytest.raises(ValueError, match="top_k=51 exceeds the 50 images"):
        StreamingLabeler("soft_wpmi", {"top_k": 51}, torch.randn(3, 4), num_images=50)
    StreamingLabeler("soft_wpmi", {"top_k": 50}, torch.randn(3, 4), num_images=50)
