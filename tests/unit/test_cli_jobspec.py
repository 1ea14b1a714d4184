"""Job spec: reference defaults, YAML round trip, precedence and clear validation errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from cdissect_cli.errors import InputError, SpecError
from cdissect_cli.jobspec import load_spec_file, parse_param_flags, resolve_spec


def test_defaults_match_the_reference() -> None:
    spec = resolve_spec()
    assert spec.target_model == "resnet50"
    assert spec.layers == ("conv1", "layer1", "layer2", "layer3", "layer4")
    assert (spec.probe_set, spec.concept_set, spec.clip_model) == ("broden", "20k", "ViT-B/16")
    assert spec.similarity_function == "soft_wpmi"
    assert (spec.pooling, spec.token_pooling, spec.clip_precision) == ("avg", "cls", "float32")
    assert spec.target_precision == "float32"
    assert (spec.top_concepts, spec.top_images, spec.on_bad_image) == (5, 10, "error")
    assert spec.prompt_templates == ()


def test_yaml_round_trip_and_flag_precedence(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("target_model: resnet18\nlayers: layer3,layer4\ntarget_precision: bfloat16\n"
                    "similarity: {function: wpmi, params: {top_k: 20}}\ntop_images: 7\n")
    spec = resolve_spec(load_spec_file(path), {"target_model": "resnet34", "top_images": None})
    assert spec.target_model == "resnet34"          # flag beats file
    assert spec.top_images == 7                     # unset flag falls through to the file
    assert spec.layers == ("layer3", "layer4")
    assert spec.similarity_function == "wpmi" and dict(spec.similarity_params) == {"top_k": 20.0}
    echo = tmp_path / "echo.yaml"
    echo.write_text(spec.to_yaml())
    assert resolve_spec(load_spec_file(echo)) == spec
    proto = spec.to_proto()
    assert list(proto.layers) == ["layer3", "layer4"] and proto.similarity.params["top_k"] == 20.0
    assert spec.target_precision == "bfloat16" and proto.target_precision == "bfloat16"


@pytest.mark.parametrize("values, words", [
    ({"pooling": "mean"}, ["pooling", "avg, max"]),
    ({"target_precision": "float16"}, ["target_precision", "float32, bfloat16"]),
    ({"layers": "layer3,,layer4"}, ["empty name", "cdissect layers"]),
    ({"layers": "layer4,layer4"}, ["twice"]),
    ({"top_images": 0}, ["top_images", "positive"]),
    ({"similarity_function": "cosine"}, ["similarity function", "soft_wpmi"]),
    ({"similarity_params": {"p": 3}}, ["does not apply to soft_wpmi", "top_k"]),
    ({"prompt_templates": ["a photo"]}, ["placeholder"]),
    ({"concept_set": " "}, ["concept_set is empty"]),
])
def test_bad_values_name_the_fix(values: dict, words: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        resolve_spec(None, values)
    for word in words:
        assert word in str(info.value)


def test_unknown_yaml_key_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("target_modle: resnet18\n")
    with pytest.raises(SpecError, match="target_modle.*valid keys: .*target_model"):
        resolve_spec(load_spec_file(path))


def test_missing_and_non_mapping_spec_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec_file(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec_file(tmp_path / "list.yaml")


def test_param_flags() -> None:
    assert parse_param_flags(None) is None
    assert parse_param_flags(["top_k=50", "a = 5"]) == {"top_k": 50.0, "a": 5.0}
    with pytest.raises(SpecError, match="name=value"):
        parse_param_flags(["top_k"])


def test_a_spec_file_that_is_not_utf8_is_named_with_the_encoding_problem(tmp_path: Path) -> None:
    """A Latin-1 job spec used to print a UnicodeDecodeError traceback."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("target_model: résnet\n".encode("latin-1"))
    with pytest.raises(InputError) as info:
        load_spec_file(path)
    message = str(info.value)
    assert str(path) in message and "not UTF-8" in message and "0xe9" in message and "line 1" in message
    assert "save it as UTF-8" in message
