"""One vocabulary, one home: cdissect_common.vocabulary is the only list of precisions, poolings,
bad-image policies and similarity functions/parameters, and every part accepts all of it.

Two ways a value can be added in one place only, and the test that catches each:
- a part keeps a list of its own (so a value added to the vocabulary is rejected there, or one
  added there is unknown elsewhere): ``test_no_other_module_restates_a_vocabulary`` scans the
  sources, and the ``accepts_every`` tests feed every value to every consumer;
- the dense similarity functions' keyword defaults (the reference's signatures) drift from
  SIMILARITY_DEFAULTS: ``test_dense_function_signatures_match_the_vocabulary``.
"""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

from cdissect_common import vocabulary as voc
from cdissect_common.images import check_bad_image_policy
from cdissect_cli.jobspec import parse_param_flags, resolve_spec
from cdissect_activations.pooling import check_pooling
from cdissect_embedder.backends.base import resolve_precision
from cdissect_labeler import similarity
from cdissect_labeler.streaming import StreamingLabeler

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("services", "cli", "shapes_world")
VOCABULARIES = {"PRECISIONS": voc.PRECISIONS, "POOLINGS": voc.POOLINGS, "TOKEN_POOLINGS": voc.TOKEN_POOLINGS,
                "BAD_IMAGE_POLICIES": voc.BAD_IMAGE_POLICIES, "SIMILARITY_FUNCTIONS": voc.SIMILARITY_FUNCTIONS,
                "SELECTIONS": voc.SELECTIONS,
                "SAE_ACTIVATIONS": voc.SAE_ACTIVATIONS}


def _string_collections(tree: ast.AST):
    """(line, set of strings) of every tuple/list/set literal and of every dict literal's keys."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        else:
            continue
        strings = {e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        if len(strings) >= 2:
            yield node.lineno, strings


def test_no_other_module_restates_a_vocabulary() -> None:
    own = REPO / "services/common/cdissect_common/vocabulary.py"
    found = []
    for folder in SOURCES:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == own or "_pb2" in path.name or "/build/" in path.as_posix():
                continue
            for line, strings in _string_collections(ast.parse(path.read_text())):
                for name, values in VOCABULARIES.items():
                    if len(strings & set(values)) >= 2:
                        found.append(f"{path.relative_to(REPO)}:{line} lists {sorted(strings & set(values))} "
                                     f"(use cdissect_common.vocabulary.{name})")
    assert not found, "vocabularies written out again outside cdissect_common.vocabulary:\n" + "\n".join(found)


@pytest.mark.parametrize("function", voc.SIMILARITY_FUNCTIONS)
def test_dense_function_signatures_match_the_vocabulary(function: str) -> None:
    signature = inspect.signature(getattr(similarity, function))
    keywords = {name: p.default for name, p in signature.parameters.items()
                if p.default is not inspect.Parameter.empty and name != "device"}
    assert keywords == voc.SIMILARITY_DEFAULTS[function], (
        f"similarity.{function}'s keyword defaults {keywords} differ from "
        f"cdissect_common.vocabulary.SIMILARITY_DEFAULTS[{function!r}]; change both")


@pytest.mark.parametrize("function", voc.SIMILARITY_FUNCTIONS)
def test_cli_and_labeler_accept_every_parameter_of_every_function(function: str) -> None:
    """The CLI used to reject `--param min_norm=...` for cos_similarity_cubed, which the labeler takes."""
    defaults = voc.SIMILARITY_DEFAULTS[function]
    flags = parse_param_flags([f"{name}={value}" for name, value in defaults.items()])
    spec = resolve_spec(overrides={"similarity_function": function, "similarity_params": flags})
    assert set(spec.similarity_params) == set(defaults)
    assert similarity.resolve_params(function, dict(spec.similarity_params)) == defaults
    StreamingLabeler(function, dict(spec.similarity_params), torch.randn(3, 4))


def test_every_choice_is_accepted_by_the_cli_and_the_services() -> None:
    for precision in voc.PRECISIONS:
        assert resolve_spec(overrides={"clip_precision": precision}).clip_precision == precision
        StreamingLabeler("cos_similarity", {}, torch.randn(3, 4), precision=precision)
        assert resolve_precision(precision, torch.device("cuda")) == getattr(torch, precision)
    for pooling in voc.POOLINGS:
        assert resolve_spec(overrides={"pooling": pooling}).pooling == pooling
        check_pooling(pooling)
    for token_pooling in voc.TOKEN_POOLINGS:
        assert resolve_spec(overrides={"token_pooling": token_pooling}).token_pooling == token_pooling
        check_pooling("avg", token_pooling)
    for policy in voc.BAD_IMAGE_POLICIES:
        assert resolve_spec(overrides={"on_bad_image": policy}).on_bad_image == policy
        assert check_bad_image_policy(policy) == policy
    for select in voc.SELECTIONS:
        assert resolve_spec(overrides={"select": select}).select == select
        StreamingLabeler("cos_similarity", {}, torch.randn(3, 4), select=select)
    assert resolve_spec().select == voc.SELECTIONS[0]
    assert similarity.FUNCTIONS == voc.SIMILARITY_FUNCTIONS
    assert resolve_spec().similarity_function == voc.SIMILARITY_FUNCTIONS[0]


def test_the_scoring_families_hold_every_function_once() -> None:
    families = voc.PMI_FUNCTIONS + voc.RANK_FUNCTIONS + voc.COSINE_FUNCTIONS
    assert sorted(families) == sorted(voc.SIMILARITY_FUNCTIONS)
    assert all("top_k" in voc.SIMILARITY_DEFAULTS[f] for f in voc.PMI_FUNCTIONS)
