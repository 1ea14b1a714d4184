from cdissect.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LabelLayerRequest(_message.Message):
    __slots__ = ("layer", "image_embeddings", "text_embeddings", "activations", "similarity", "top_concepts", "top_images", "precision")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TEXT_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    TOP_CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    TOP_IMAGES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    layer: str
    image_embeddings: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    text_embeddings: _common_pb2.ArtifactRef
    activations: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    similarity: _common_pb2.SimilarityParams
    top_concepts: int
    top_images: int
    precision: str
    def __init__(self, layer: _Optional[str] = ..., image_embeddings: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., text_embeddings: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., activations: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., similarity: _Optional[_Union[_common_pb2.SimilarityParams, _Mapping]] = ..., top_concepts: _Optional[int] = ..., top_images: _Optional[int] = ..., precision: _Optional[str] = ...) -> None: ...

class UnitLabel(_message.Message):
    __slots__ = ("unit", "concept_ids", "scores", "top_images", "dead")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TOP_IMAGES_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    unit: int
    concept_ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    top_images: _containers.RepeatedScalarFieldContainer[int]
    dead: bool
    def __init__(self, unit: _Optional[int] = ..., concept_ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., top_images: _Optional[_Iterable[int]] = ..., dead: _Optional[bool] = ...) -> None: ...

class LabelLayerResponse(_message.Message):
    __slots__ = ("labels", "units", "reused")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    labels: _common_pb2.ArtifactRef
    units: _containers.RepeatedCompositeFieldContainer[UnitLabel]
    reused: bool
    def __init__(self, labels: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., units: _Optional[_Iterable[_Union[UnitLabel, _Mapping]]] = ..., reused: _Optional[bool] = ...) -> None: ...
