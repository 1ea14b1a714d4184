from cdissect.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedImageShardRequest(_message.Message):
    __slots__ = ("model", "shard", "precision", "on_bad_image", "model_file")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ON_BAD_IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILE_FIELD_NUMBER: _ClassVar[int]
    model: str
    shard: _common_pb2.Shard
    precision: str
    on_bad_image: str
    model_file: _common_pb2.ArtifactRef
    def __init__(self, model: _Optional[str] = ..., shard: _Optional[_Union[_common_pb2.Shard, _Mapping]] = ..., precision: _Optional[str] = ..., on_bad_image: _Optional[str] = ..., model_file: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class EmbedConceptsRequest(_message.Message):
    __slots__ = ("model", "concepts", "prompt_templates", "precision", "model_file")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILE_FIELD_NUMBER: _ClassVar[int]
    model: str
    concepts: _containers.RepeatedScalarFieldContainer[str]
    prompt_templates: _containers.RepeatedScalarFieldContainer[str]
    precision: str
    model_file: _common_pb2.ArtifactRef
    def __init__(self, model: _Optional[str] = ..., concepts: _Optional[_Iterable[str]] = ..., prompt_templates: _Optional[_Iterable[str]] = ..., precision: _Optional[str] = ..., model_file: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "reused", "skipped_images", "skipped_names")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_NAMES_FIELD_NUMBER: _ClassVar[int]
    embeddings: _common_pb2.ArtifactRef
    reused: bool
    skipped_images: int
    skipped_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, embeddings: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., reused: _Optional[bool] = ..., skipped_images: _Optional[int] = ..., skipped_names: _Optional[_Iterable[str]] = ...) -> None: ...

class EmbedTextsRequest(_message.Message):
    __slots__ = ("model", "texts", "prompt_templates", "normalize", "model_file")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILE_FIELD_NUMBER: _ClassVar[int]
    model: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    prompt_templates: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    model_file: _common_pb2.ArtifactRef
    def __init__(self, model: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., prompt_templates: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ..., model_file: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class EmbedImagesRequest(_message.Message):
    __slots__ = ("model", "images", "normalize", "model_file")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILE_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    normalize: bool
    model_file: _common_pb2.ArtifactRef
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., normalize: _Optional[bool] = ..., model_file: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Vectors(_message.Message):
    __slots__ = ("vectors", "model_id", "checkpoint_sha256", "dtype", "device")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    vectors: _containers.RepeatedCompositeFieldContainer[Vector]
    model_id: str
    checkpoint_sha256: str
    dtype: str
    device: str
    def __init__(self, vectors: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., model_id: _Optional[str] = ..., checkpoint_sha256: _Optional[str] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...
