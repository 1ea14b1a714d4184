"""The few RPCs the analyses make: text embeddings, concept embeddings, relabelling a layer.

Analyses never load a model: CLIP and sentence-embedding vectors come from the embedder's
inline `EmbedTexts` RPC, and re-scoring a layer against new concepts goes through the
labeler's `LabelLayer` on the artifacts the run already stored (image embeddings and
activations are referenced by key, never recomputed). Stubs come from
`cdissect_cli.connection.Connection`, so analyses reach services exactly as `cdissect run` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import grpc
import numpy as np

from cdissect.v1 import common_pb2, embedder_pb2, labeler_pb2
from cdissect_common.model_specs import split_checkpoint
from cdissect_cli.analyses.run_results import LayerResult, RunResults
from cdissect_cli.errors import CliError, InputError

TEXT_BATCH = 256
SENTENCE_MODELS = ("sentence:all-mpnet-base-v2", "sentence:all-MiniLM-L6-v2")
# Codes meaning "this model is not available here" (try the next one), not "service down".
_MODEL_UNAVAILABLE = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                      grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED)


@dataclass(frozen=True)
class TextVectors:
    """L2-normalised vectors of distinct texts, and the model that made them."""

    texts: tuple[str, ...]
    vectors: np.ndarray  # [len(texts), d] float32
    model: str

    def of(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of `texts` (each must be among the embedded ones), in that order."""
        index = {t: i for i, t in enumerate(self.texts)}
        return self.vectors[[index[t] for t in texts]]


def rpc_error(what: str, err: grpc.RpcError) -> CliError:
    """A user-facing error for a failed RPC: an InputError when the service refused the request as
    INVALID_ARGUMENT (exit 2), else a CliError (exit 1)."""
    kind = InputError if err.code() == grpc.StatusCode.INVALID_ARGUMENT else CliError
    return kind(f"{what} failed: {err.code().name}: {err.details()}. Check that the service runs "
                f"(`cdissect status`) and that the model name is right.")


def embed_texts(stub: Any, model: str, texts: Sequence[str], deadline_s: float = 300.0,
                model_file: common_pb2.ArtifactRef | None = None) -> TextVectors:
    """Embed the distinct `texts` with `model` through EmbedTexts, in batches; rows L2-normalised.

    `model_file` is a checkpoint the run uploaded (RunResults.clip_file); `model` may still show
    its local path, which is not sent then.
    """
    distinct = tuple(dict.fromkeys(texts))
    rows: list[np.ndarray] = []
    name = split_checkpoint(model)[0] if model_file is not None else model
    for start in range(0, len(distinct), TEXT_BATCH):
        batch = list(distinct[start:start + TEXT_BATCH])
        reply = stub.EmbedTexts(embedder_pb2.EmbedTextsRequest(model=name, model_file=model_file, texts=batch,
                                                               normalize=True), timeout=deadline_s)
        if len(reply.vectors) != len(batch):
            raise CliError(f"the embedder returned {len(reply.vectors)} vectors for {len(batch)} texts "
                           f"(model {model!r}); it is misbehaving, check its log.")
        rows.append(np.asarray([list(v.values) for v in reply.vectors], dtype=np.float32))
    vectors = np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True) if vectors.size else 1.0
    vectors = vectors / np.maximum(norms, 1e-12)
    return TextVectors(texts=distinct, vectors=vectors, model=model)


def embed_texts_checked(stub: Any, model: str, texts: Sequence[str], deadline_s: float = 300.0,
                        model_file: common_pb2.ArtifactRef | None = None) -> TextVectors:
    """embed_texts with RPC failures turned into a clear CliError."""
    try:
        return embed_texts(stub, model, texts, deadline_s, model_file)
    except grpc.RpcError as err:
        raise rpc_error(f"EmbedTexts with model {model!r}", err) from err


def sentence_vectors(stub: Any, texts: Sequence[str], models: Sequence[str] = SENTENCE_MODELS,
                     deadline_s: float = 300.0) -> tuple[TextVectors | None, list[str]]:
    """Embed with the first sentence model the embedder can load; (None, reasons) when none can."""
    reasons = []
    for model in models:
        try:
            return embed_texts(stub, model, texts, deadline_s), reasons
        except grpc.RpcError as err:
            if err.code() not in _MODEL_UNAVAILABLE:
                raise rpc_error(f"EmbedTexts with model {model!r}", err) from err
            reasons.append(f"{model}: {err.code().name}: {err.details()}")
    return None, reasons


def similarity_params(run: RunResults) -> common_pb2.SimilarityParams:
    """The run's similarity function and parameters, as the labeler takes them."""
    raw = run.job.get("similarity") or {}
    if isinstance(raw, dict):
        function, params = raw.get("function", "soft_wpmi"), raw.get("params") or {}
    else:
        function, params = str(raw), {}
    return common_pb2.SimilarityParams(function=str(function),
                                       params={str(k): float(v) for k, v in params.items()})


def stored_ref(store: Any, key: str, what: str) -> common_pb2.ArtifactRef:
    """Full ref (digest, dtype, shape) of an artifact the run stored; a clear error if it is gone."""
    from cdissect_common.artifacts import find_artifact

    ref = find_artifact(store, key) if key else None
    if ref is None:
        raise CliError(f"the {what} artifact {key or '(none recorded)'} is not in the store {store.url}: "
                       f"the store was cleaned or moved, or results.json predates it. Rerun "
                       f"`cdissect run` (it recomputes only what is missing) or pass --store.")
    return ref


def layer_artifact_refs(store: Any, layer: LayerResult) -> tuple[list[common_pb2.ArtifactRef],
                                                                  list[common_pb2.ArtifactRef]]:
    """Refs of the layer's stored image embeddings and activations, per shard in dataset order."""
    if not layer.image_embedding_keys or not layer.activation_keys:
        raise InputError(f"results.json lists no image-embedding or activation artifacts for layer "
                         f"{layer.name!r}; rerun `cdissect run` with this version to record them.")
    images = [stored_ref(store, k, f"image-embedding ({layer.name})") for k in layer.image_embedding_keys]
    activations = [stored_ref(store, k, f"activation ({layer.name})") for k in layer.activation_keys]
    return images, activations


def embed_concepts(stub: Any, run: RunResults, concepts: Sequence[str],
                   deadline_s: float = 900.0) -> common_pb2.ArtifactRef:
    """Text-embedding artifact of `concepts` with the run's CLIP, templates and precision."""
    request = embedder_pb2.EmbedConceptsRequest(
        model=split_checkpoint(run.clip_model)[0] if run.clip_file is not None else run.clip_model,
        model_file=run.clip_file, concepts=list(concepts),
        prompt_templates=list(run.job.get("prompt_templates") or []),
        precision=str(run.job.get("clip_precision") or ""))
    try:
        return stub.EmbedConcepts(request, timeout=deadline_s).embeddings
    except grpc.RpcError as err:
        raise rpc_error("EmbedConcepts", err) from err


def label_layer(stub: Any, run: RunResults, layer: LayerResult, image_refs: list, activation_refs: list,
                text_ref: common_pb2.ArtifactRef, top_concepts: int,
                deadline_s: float = 900.0) -> labeler_pb2.LabelLayerResponse:
    """LabelLayer on the run's stored artifacts with a given text-embedding artifact."""
    request = labeler_pb2.LabelLayerRequest(
        layer=layer.name, image_embeddings=image_refs, text_embeddings=text_ref,
        activations=activation_refs, similarity=similarity_params(run), top_concepts=top_concepts,
        top_images=int(run.job.get("top_images") or 10),
        precision=str(run.job.get("clip_precision") or ""))
    try:
        return stub.LabelLayer(request, timeout=deadline_s)
    except grpc.RpcError as err:
        raise rpc_error(f"LabelLayer on layer {layer.name!r}", err) from err
