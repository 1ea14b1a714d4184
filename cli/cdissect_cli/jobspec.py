"""The job spec of a dissection run: defaults, YAML load, validation, echo.

A job spec says everything that determines a run's results (the proto `cdissect.v1.JobSpec`, plus
the CLI-only `shard_size` used when a probe folder is registered). Its defaults reproduce the
CLIP-Dissect reference (`describe_neurons.py`): ResNet-50, conv1..layer4, Broden, the 20k word
list, CLIP ViT-B/16, soft-WPMI with the authors' parameters, avg pooling, CLS token.

Values come from three layers, strongest first: command-line flags, a YAML file (`--spec`),
these defaults. `resolve_spec` merges and validates them; `JobSpec.to_yaml` is what a run echoes
into its folder, and `load_spec_file` reads that echo back unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml
from cdissect_common import evaluation, model_specs
from cdissect_common.vocabulary import (BAD_IMAGE_POLICIES, POOLINGS, PRECISIONS, SELECTIONS, SIMILARITY_FUNCTIONS,
                                        TARGET_PRECISIONS, TOKEN_POOLINGS, check_similarity_function,
                                        check_similarity_params)

from cdissect_cli.errors import SpecError, read_text_file

DEFAULT_LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")
DEFAULT_SHARD_SIZE = 1000


@dataclass(frozen=True)
class JobSpec:
    """One resolved dissection job; field names follow `cdissect.v1.JobSpec`."""

    target_model: str = "resnet50"
    target_weights: str = ""
    layers: tuple[str, ...] = DEFAULT_LAYERS
    pooling: str = "avg"
    token_pooling: str = "cls"
    probe_set: str = "broden"
    concept_set: str = "20k"
    clip_model: str = "ViT-B/16"
    similarity_function: str = SIMILARITY_FUNCTIONS[0]
    similarity_params: Mapping[str, float] = field(default_factory=dict)
    clip_precision: str = "float32"
    target_precision: str = "float32"
    prompt_templates: tuple[str, ...] = ()
    top_concepts: int = 5
    top_images: int = 10
    on_bad_image: str = "error"
    features: str = ""
    shard_size: int = DEFAULT_SHARD_SIZE
    select: str = SELECTIONS[0]
    candidates: int = evaluation.SIMULATION_CANDIDATES
    rank_penalty: float = evaluation.SIMULATION_RANK_PENALTY
    eval_fraction: float = evaluation.EVAL_FRACTION
    eval_seed: int = evaluation.EVAL_SEED
    auprc_alpha: float = evaluation.AUPRC_ALPHA

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (the YAML layout): similarity nested as {function, params}."""
        return {
            "target_model": self.target_model,
            "target_weights": self.target_weights,
            "layers": list(self.layers),
            "pooling": self.pooling,
            "token_pooling": self.token_pooling,
            "probe_set": self.probe_set,
            "concept_set": self.concept_set,
            "clip_model": self.clip_model,
            "similarity": {"function": self.similarity_function,
                           "params": {k: float(v) for k, v in sorted(self.similarity_params.items())}},
            "clip_precision": self.clip_precision,
            "target_precision": self.target_precision,
            "prompt_templates": list(self.prompt_templates),
            "top_concepts": self.top_concepts,
            "top_images": self.top_images,
            "on_bad_image": self.on_bad_image,
            "features": self.features,
            "shard_size": self.shard_size,
            "select": self.select,
            "candidates": self.candidates,
            "rank_penalty": self.rank_penalty,
            "eval_fraction": self.eval_fraction,
            "eval_seed": self.eval_seed,
            "auprc_alpha": self.auprc_alpha,
        }

    def to_yaml(self) -> str:
        """The spec as YAML, loadable again with `load_spec_file` + `resolve_spec`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_proto(self) -> Any:
        """The spec as a `cdissect.v1.JobSpec` message (without the CLI-only shard size)."""
        from cdissect.v1 import common_pb2

        return common_pb2.JobSpec(
            target_model=self.target_model, target_weights=self.target_weights,
            layers=list(self.layers), pooling=self.pooling, token_pooling=self.token_pooling,
            probe_set=self.probe_set, concept_set=self.concept_set, clip_model=self.clip_model,
            similarity=self.similarity_proto(), clip_precision=self.clip_precision,
            target_precision=self.target_precision, prompt_templates=list(self.prompt_templates),
            top_concepts=self.top_concepts,
            top_images=self.top_images, on_bad_image=self.on_bad_image, features=self.features,
            select=self.select,
            candidates=self.candidates, rank_penalty=self.rank_penalty, eval_fraction=self.eval_fraction,
            eval_seed=self.eval_seed, auprc_alpha=self.auprc_alpha)

    def selection_proto(self) -> Any:
        """How the labeler chooses each label (`cdissect.v1.LabelSelection`)."""
        from cdissect.v1 import labeler_pb2

        return labeler_pb2.LabelSelection(mode=self.select, candidates=self.candidates,
                                          rank_penalty=self.rank_penalty)

    def evaluation_proto(self) -> Any:
        """The held-out split and AUPRC share of the simulation scores (`cdissect.v1.HeldOutEvaluation`)."""
        from cdissect.v1 import labeler_pb2

        return labeler_pb2.HeldOutEvaluation(fraction=self.eval_fraction, seed=self.eval_seed,
                                             alpha=self.auprc_alpha)

    def similarity_proto(self) -> Any:
        """The similarity function and its explicit parameters as `cdissect.v1.SimilarityParams`."""
        from cdissect.v1 import common_pb2

        return common_pb2.SimilarityParams(
            function=self.similarity_function,
            params={k: float(v) for k, v in self.similarity_params.items()})


_FIELDS = {f.name for f in dataclasses.fields(JobSpec)} - {"similarity_function", "similarity_params"}
_YAML_KEYS = sorted(_FIELDS | {"similarity"})


def load_spec_file(path: Path) -> dict[str, Any]:
    """Read a YAML job spec into a plain mapping (validated later by `resolve_spec`)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"job spec file {path} does not exist: pass the path of a YAML file "
                        f"(for example the job.yaml of an earlier run folder)")
    text = read_text_file(path, "job spec file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"job spec file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"job spec file {path} must hold a mapping of keys "
                        f"({', '.join(_YAML_KEYS)}), not a {type(data).__name__}")
    return data


def resolve_spec(file_values: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> JobSpec:
    """Merge defaults < YAML values < flag overrides (None = not given) and validate the result.

    `overrides` uses the YAML key names, except that `similarity_function` and
    `similarity_params` may be given separately (flags set them one at a time).
    """
    merged: dict[str, Any] = {}
    file_values = dict(file_values or {})
    unknown = sorted(set(file_values) - set(_YAML_KEYS))
    if unknown:
        raise SpecError(f"unknown job spec key(s) {', '.join(unknown)}; valid keys: {', '.join(_YAML_KEYS)}")
    sim = file_values.pop("similarity", None)
    if sim is not None:
        if isinstance(sim, str):
            sim = {"function": sim}
        if not isinstance(sim, dict) or set(sim) - {"function", "params"}:
            raise SpecError("job spec key 'similarity' must be a function name or a mapping "
                            "{function: soft_wpmi, params: {top_k: 100, ...}}")
        if "function" in sim:
            merged["similarity_function"] = sim["function"]
        if sim.get("params") is not None:
            merged["similarity_params"] = sim["params"]
    merged.update(file_values)
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    return _validated(merged)


def _as_str_tuple(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise SpecError(f"job spec key '{key}' must be a list or a comma-separated string, got {value!r}")
    return tuple(items)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    value = str(value)
    if value not in choices:
        raise SpecError(f"{key} '{value}' is not supported; choose one of: {', '.join(choices)}")
    return value


def _positive_int(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SpecError(f"{key} must be a positive integer, got {value!r}") from None
    if number < 1 or (isinstance(value, float) and number != value):
        raise SpecError(f"{key} must be a positive integer, got {value!r}")
    return number


def _validated(values: dict[str, Any]) -> JobSpec:
    """Build a JobSpec from merged values, checking every field; raise SpecError naming the fix."""
    kwargs: dict[str, Any] = {}
    for key in ("target_model", "target_weights", "probe_set", "concept_set", "clip_model", "features"):
        if key in values:
            kwargs[key] = "" if values[key] is None else str(values[key]).strip()
    for key in ("target_model", "probe_set", "concept_set", "clip_model"):
        if key in kwargs and not kwargs[key]:
            raise SpecError(f"{key} is empty: give a name (see `cdissect models`, `cdissect datasets list`, "
                            f"`cdissect concepts`) or a path")
    if "target_model" in kwargs or "target_weights" in kwargs:      # split as the services split it
        try:
            model_specs.parse_model(kwargs.get("target_model", JobSpec.target_model), kwargs.get("target_weights", ""))
        except ValueError as err:
            raise SpecError(str(err)) from None
    if "layers" in values:
        layers = _as_str_tuple("layers", values["layers"])
        if not layers or any(not name for name in layers):
            raise SpecError(f"layers {values['layers']!r} contains an empty name: give comma-separated "
                            f"layer names without blanks, e.g. layer3,layer4 (see `cdissect layers MODEL`)")
        if len(set(layers)) != len(layers):
            raise SpecError(f"layers {','.join(layers)} names a layer twice: list each layer once")
        kwargs["layers"] = layers
    if kwargs.get("features"):
        from cdissect_cli.user_inputs import parse_features

        parse_features(kwargs["features"])
        layers = kwargs.get("layers", DEFAULT_LAYERS)
        if len(layers) != 1:
            raise SpecError(f"features {kwargs['features']!r} apply to exactly one layer, but {len(layers)} are "
                            f"given ({','.join(layers)}); pass --layers with the one layer the SAE was trained on")
    if "pooling" in values:
        kwargs["pooling"] = _choice("pooling", values["pooling"], POOLINGS)
    if "token_pooling" in values:
        kwargs["token_pooling"] = _choice("token_pooling", values["token_pooling"], TOKEN_POOLINGS)
    if "clip_precision" in values:
        kwargs["clip_precision"] = _choice("clip_precision", values["clip_precision"], PRECISIONS)
    if "target_precision" in values:
        kwargs["target_precision"] = _choice("target_precision", values["target_precision"], TARGET_PRECISIONS)
    if "on_bad_image" in values:
        kwargs["on_bad_image"] = _choice("on_bad_image", values["on_bad_image"], BAD_IMAGE_POLICIES)
    for key in ("top_concepts", "top_images", "shard_size"):
        if key in values:
            kwargs[key] = _positive_int(key, values[key])
    if "select" in values:
        kwargs["select"] = _choice("select", values["select"], SELECTIONS)
    kwargs.update(_evaluation_values(values))
    if "prompt_templates" in values:
        templates = _as_str_tuple("prompt_templates", values["prompt_templates"] or [])
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise SpecError(f"prompt template {bad[0]!r} has no '{{}}' placeholder for the concept: "
                            f"write it like 'a photo of {{}}'")
        kwargs["prompt_templates"] = templates
    try:
        function = check_similarity_function(str(values.get("similarity_function", SIMILARITY_FUNCTIONS[0])))
    except ValueError as err:
        raise SpecError(str(err)) from None
    kwargs["similarity_function"] = function
    kwargs["similarity_params"] = _similarity_params(function, values.get("similarity_params") or {})
    return JobSpec(**kwargs)


def _evaluation_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """candidates, rank_penalty, eval_fraction, eval_seed, auprc_alpha, checked by cdissect_common.evaluation."""
    checks = {"candidates": evaluation.check_candidates, "rank_penalty": evaluation.check_rank_penalty,
              "eval_fraction": evaluation.check_eval_fraction, "auprc_alpha": evaluation.check_alpha,
              "eval_seed": _seed}
    out: dict[str, Any] = {}
    for key, check in checks.items():
        if key not in values:
            continue
        try:
            out[key] = check(values[key])
        except (TypeError, ValueError) as err:
            flag = "--" + key.replace("_", "-")
            raise SpecError(f"{flag} / {key}: {err}") from None
    return out


def _seed(value: Any) -> int:
    if isinstance(value, bool) or int(value) != float(value) or int(value) < 0:
        raise ValueError(f"the split seed must be a non-negative integer, got {value!r}")
    return int(value)


def _similarity_params(function: str, params: Any) -> dict[str, int | float]:
    """The given similarity parameters, checked by the one rule the services use too (vocabulary)."""
    if not isinstance(params, Mapping):
        raise SpecError(f"similarity params must be a mapping of name to number, got {params!r}")
    try:
        return check_similarity_params(function, params)
    except ValueError as err:
        raise SpecError(str(err)) from None


def parse_param_flags(items: list[str] | None) -> dict[str, float] | None:
    """Turn repeated `--param name=value` flags into a mapping (None when no flag was given)."""
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SpecError(f"--param {item!r} must look like name=value, e.g. --param top_k=100")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise SpecError(f"--param {item!r}: {value!r} is not a number") from None
    return out
