from cdissect.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UserFile(_message.Message):
    __slots__ = ("name", "ref")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    name: str
    ref: _common_pb2.ArtifactRef
    def __init__(self, name: _Optional[str] = ..., ref: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class Features(_message.Message):
    __slots__ = ("kind", "layer", "file", "activation", "k")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    kind: str
    layer: str
    file: UserFile
    activation: str
    k: int
    def __init__(self, kind: _Optional[str] = ..., layer: _Optional[str] = ..., file: _Optional[_Union[UserFile, _Mapping]] = ..., activation: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class ComputeShardActivationsRequest(_message.Message):
    __slots__ = ("model", "weights", "layers", "pooling", "token_pooling", "shard", "on_bad_image", "precision", "model_files", "features")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    TOKEN_POOLING_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ON_BAD_IMAGE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    pooling: str
    token_pooling: str
    shard: _common_pb2.Shard
    on_bad_image: str
    precision: str
    model_files: _containers.RepeatedCompositeFieldContainer[UserFile]
    features: Features
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., pooling: _Optional[str] = ..., token_pooling: _Optional[str] = ..., shard: _Optional[_Union[_common_pb2.Shard, _Mapping]] = ..., on_bad_image: _Optional[str] = ..., precision: _Optional[str] = ..., model_files: _Optional[_Iterable[_Union[UserFile, _Mapping]]] = ..., features: _Optional[_Union[Features, _Mapping]] = ...) -> None: ...

class CheckActivationsResponse(_message.Message):
    __slots__ = ("units", "model_id", "checkpoint_sha256")
    UNITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    units: _containers.RepeatedScalarFieldContainer[int]
    model_id: str
    checkpoint_sha256: str
    def __init__(self, units: _Optional[_Iterable[int]] = ..., model_id: _Optional[str] = ..., checkpoint_sha256: _Optional[str] = ...) -> None: ...

class ComputeShardActivationsResponse(_message.Message):
    __slots__ = ("activations", "reused", "skipped_images")
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    activations: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    reused: int
    skipped_images: int
    def __init__(self, activations: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., reused: _Optional[int] = ..., skipped_images: _Optional[int] = ...) -> None: ...

class ListLayersRequest(_message.Message):
    __slots__ = ("model", "weights", "model_files")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILES_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: str
    model_files: _containers.RepeatedCompositeFieldContainer[UserFile]
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[str] = ..., model_files: _Optional[_Iterable[_Union[UserFile, _Mapping]]] = ...) -> None: ...

class LayerInfo(_message.Message):
    __slots__ = ("name", "kind", "output_shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., output_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ListLayersResponse(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerInfo]
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerInfo, _Mapping]]] = ...) -> None: ...
