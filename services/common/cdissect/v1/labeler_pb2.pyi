from cdissect.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LabelSelection(_message.Message):
    __slots__ = ("mode", "candidates", "rank_penalty")
    MODE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RANK_PENALTY_FIELD_NUMBER: _ClassVar[int]
    mode: str
    candidates: int
    rank_penalty: float
    def __init__(self, mode: _Optional[str] = ..., candidates: _Optional[int] = ..., rank_penalty: _Optional[float] = ...) -> None: ...

class HeldOutEvaluation(_message.Message):
    __slots__ = ("fraction", "seed", "alpha")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    seed: int
    alpha: float
    def __init__(self, fraction: _Optional[float] = ..., seed: _Optional[int] = ..., alpha: _Optional[float] = ...) -> None: ...

class LabelLayerRequest(_message.Message):
    __slots__ = ("layer", "image_embeddings", "text_embeddings", "activations", "similarity", "top_concepts", "top_images", "precision", "selection", "evaluation")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TEXT_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    TOP_CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    TOP_IMAGES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    layer: str
    image_embeddings: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    text_embeddings: _common_pb2.ArtifactRef
    activations: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    similarity: _common_pb2.SimilarityParams
    top_concepts: int
    top_images: int
    precision: str
    selection: LabelSelection
    evaluation: HeldOutEvaluation
    def __init__(self, layer: _Optional[str] = ..., image_embeddings: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., text_embeddings: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., activations: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., similarity: _Optional[_Union[_common_pb2.SimilarityParams, _Mapping]] = ..., top_concepts: _Optional[int] = ..., top_images: _Optional[int] = ..., precision: _Optional[str] = ..., selection: _Optional[_Union[LabelSelection, _Mapping]] = ..., evaluation: _Optional[_Union[HeldOutEvaluation, _Mapping]] = ...) -> None: ...

class UnitLabel(_message.Message):
    __slots__ = ("unit", "concept_ids", "scores", "top_images", "dead", "correlation", "auprc")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TOP_IMAGES_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_FIELD_NUMBER: _ClassVar[int]
    AUPRC_FIELD_NUMBER: _ClassVar[int]
    unit: int
    concept_ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    top_images: _containers.RepeatedScalarFieldContainer[int]
    dead: bool
    correlation: float
    auprc: float
    def __init__(self, unit: _Optional[int] = ..., concept_ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., top_images: _Optional[_Iterable[int]] = ..., dead: _Optional[bool] = ..., correlation: _Optional[float] = ..., auprc: _Optional[float] = ...) -> None: ...

class LabelLayerResponse(_message.Message):
    __slots__ = ("labels", "units", "reused", "heldout_images")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_IMAGES_FIELD_NUMBER: _ClassVar[int]
    labels: _common_pb2.ArtifactRef
    units: _containers.RepeatedCompositeFieldContainer[UnitLabel]
    reused: bool
    heldout_images: int
    def __init__(self, labels: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., units: _Optional[_Iterable[_Union[UnitLabel, _Mapping]]] = ..., reused: _Optional[bool] = ..., heldout_images: _Optional[int] = ...) -> None: ...

class EvaluateLabelsRequest(_message.Message):
    __slots__ = ("layer", "image_embeddings", "activations", "text_embeddings", "label_ids", "evaluation", "precision", "similarity")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    TEXT_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    LABEL_IDS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    layer: str
    image_embeddings: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    activations: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    text_embeddings: _common_pb2.ArtifactRef
    label_ids: _containers.RepeatedScalarFieldContainer[int]
    evaluation: HeldOutEvaluation
    precision: str
    similarity: _common_pb2.SimilarityParams
    def __init__(self, layer: _Optional[str] = ..., image_embeddings: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., activations: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., text_embeddings: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., label_ids: _Optional[_Iterable[int]] = ..., evaluation: _Optional[_Union[HeldOutEvaluation, _Mapping]] = ..., precision: _Optional[str] = ..., similarity: _Optional[_Union[_common_pb2.SimilarityParams, _Mapping]] = ...) -> None: ...

class UnitScores(_message.Message):
    __slots__ = ("unit", "labelled", "correlation", "correlation_low", "correlation_high", "auprc", "auprc_base", "auc", "p_value", "dead", "heldout_constant")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_LOW_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_HIGH_FIELD_NUMBER: _ClassVar[int]
    AUPRC_FIELD_NUMBER: _ClassVar[int]
    AUPRC_BASE_FIELD_NUMBER: _ClassVar[int]
    AUC_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_CONSTANT_FIELD_NUMBER: _ClassVar[int]
    unit: int
    labelled: bool
    correlation: float
    correlation_low: float
    correlation_high: float
    auprc: float
    auprc_base: float
    auc: float
    p_value: float
    dead: bool
    heldout_constant: bool
    def __init__(self, unit: _Optional[int] = ..., labelled: _Optional[bool] = ..., correlation: _Optional[float] = ..., correlation_low: _Optional[float] = ..., correlation_high: _Optional[float] = ..., auprc: _Optional[float] = ..., auprc_base: _Optional[float] = ..., auc: _Optional[float] = ..., p_value: _Optional[float] = ..., dead: _Optional[bool] = ..., heldout_constant: _Optional[bool] = ...) -> None: ...

class EvaluateLabelsResponse(_message.Message):
    __slots__ = ("units", "heldout_images", "positives")
    UNITS_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_IMAGES_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    units: _containers.RepeatedCompositeFieldContainer[UnitScores]
    heldout_images: int
    positives: int
    def __init__(self, units: _Optional[_Iterable[_Union[UnitScores, _Mapping]]] = ..., heldout_images: _Optional[int] = ..., positives: _Optional[int] = ...) -> None: ...
