from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactRef(_message.Message):
    __slots__ = ("bucket", "key", "sha256", "dtype", "shape", "producer")
    class ProducerEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    key: str
    sha256: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    producer: _containers.ScalarMap[str, str]
    def __init__(self, bucket: _Optional[str] = ..., key: _Optional[str] = ..., sha256: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., producer: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ImageEntry(_message.Message):
    __slots__ = ("name", "sha256", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Shard(_message.Message):
    __slots__ = ("index", "ref", "images")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    index: int
    ref: ArtifactRef
    images: _containers.RepeatedCompositeFieldContainer[ImageEntry]
    def __init__(self, index: _Optional[int] = ..., ref: _Optional[_Union[ArtifactRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[ImageEntry, _Mapping]]] = ...) -> None: ...

class DatasetManifest(_message.Message):
    __slots__ = ("name", "digest", "num_images", "shards", "info")
    class InfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    num_images: int
    shards: _containers.RepeatedCompositeFieldContainer[Shard]
    info: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., num_images: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[Shard, _Mapping]]] = ..., info: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SimilarityParams(_message.Message):
    __slots__ = ("function", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    function: str
    params: _containers.ScalarMap[str, float]
    def __init__(self, function: _Optional[str] = ..., params: _Optional[_Mapping[str, float]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("target_model", "target_weights", "layers", "pooling", "token_pooling", "probe_set", "concept_set", "clip_model", "similarity", "clip_precision", "prompt_templates", "top_concepts", "top_images", "on_bad_image", "features", "target_precision", "select", "candidates", "rank_penalty", "eval_fraction", "eval_seed", "auprc_alpha")
    TARGET_MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    TOKEN_POOLING_FIELD_NUMBER: _ClassVar[int]
    PROBE_SET_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_SET_FIELD_NUMBER: _ClassVar[int]
    CLIP_MODEL_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    CLIP_PRECISION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    TOP_CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    TOP_IMAGES_FIELD_NUMBER: _ClassVar[int]
    ON_BAD_IMAGE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TARGET_PRECISION_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RANK_PENALTY_FIELD_NUMBER: _ClassVar[int]
    EVAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    EVAL_SEED_FIELD_NUMBER: _ClassVar[int]
    AUPRC_ALPHA_FIELD_NUMBER: _ClassVar[int]
    target_model: str
    target_weights: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    pooling: str
    token_pooling: str
    probe_set: str
    concept_set: str
    clip_model: str
    similarity: SimilarityParams
    clip_precision: str
    prompt_templates: _containers.RepeatedScalarFieldContainer[str]
    top_concepts: int
    top_images: int
    on_bad_image: str
    features: str
    target_precision: str
    select: str
    candidates: int
    rank_penalty: float
    eval_fraction: float
    eval_seed: int
    auprc_alpha: float
    def __init__(self, target_model: _Optional[str] = ..., target_weights: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., pooling: _Optional[str] = ..., token_pooling: _Optional[str] = ..., probe_set: _Optional[str] = ..., concept_set: _Optional[str] = ..., clip_model: _Optional[str] = ..., similarity: _Optional[_Union[SimilarityParams, _Mapping]] = ..., clip_precision: _Optional[str] = ..., prompt_templates: _Optional[_Iterable[str]] = ..., top_concepts: _Optional[int] = ..., top_images: _Optional[int] = ..., on_bad_image: _Optional[str] = ..., features: _Optional[str] = ..., target_precision: _Optional[str] = ..., select: _Optional[str] = ..., candidates: _Optional[int] = ..., rank_penalty: _Optional[float] = ..., eval_fraction: _Optional[float] = ..., eval_seed: _Optional[int] = ..., auprc_alpha: _Optional[float] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "served")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    served: str
    def __init__(self, models: _Optional[_Iterable[str]] = ..., served: _Optional[str] = ...) -> None: ...
