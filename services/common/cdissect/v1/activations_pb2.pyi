from cdissect.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ComputeShardActivationsRequest(_message.Message):
    __slots__ = ("model", "weights", "layers", "pooling", "token_pooling", "shard", "on_bad_image", "weights_file")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    TOKEN_POOLING_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ON_BAD_IMAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FILE_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    pooling: str
    token_pooling: str
    shard: _common_pb2.Shard
    on_bad_image: str
    weights_file: _common_pb2.ArtifactRef
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., pooling: _Optional[str] = ..., token_pooling: _Optional[str] = ..., shard: _Optional[_Union[_common_pb2.Shard, _Mapping]] = ..., on_bad_image: _Optional[str] = ..., weights_file: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("model", "weights", "weights_file")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FILE_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: str
    weights_file: _common_pb2.ArtifactRef
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[str] = ..., weights_file: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

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
