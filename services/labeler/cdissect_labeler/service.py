"""The Labeler gRPC servicer: adapts LabelLayer to ``streaming.StreamingLabeler``.

The layer's shard artifacts (image embeddings and activations, dataset order) are read one
shard at a time and fed to the streaming labeler, so the [images × concepts] matrix is never
held. The labels (``LayerLabels.to_arrays()``) are stored under a key made of every input
digest and parameter; an existing labels artifact is returned at once with ``reused=true``.
"""
from __future__ import annotations

import logging

import grpc
import numpy as np

from cdissect.v1 import common_pb2, labeler_pb2, labeler_pb2_grpc
from cdissect_common import artifacts
from cdissect_common.errors import failed_precondition, invalid_argument
from cdissect_common.server import Registration, ServiceRuntime
from cdissect_common.vocabulary import PRECISIONS
from cdissect_labeler import similarity
from cdissect_labeler.labels import LayerLabels
from cdissect_labeler.streaming import StreamingLabeler

log = logging.getLogger("cdissect.labeler")
SERVICE = "labeler"
DEFAULT_FUNCTION = "soft_wpmi"
DEFAULT_TOP_CONCEPTS = 5
DEFAULT_TOP_IMAGES = 10


def _array(arrays: dict[str, np.ndarray], name: str, ref: common_pb2.ArtifactRef) -> np.ndarray:
    if name in arrays:
        return arrays[name]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise failed_precondition(f"artifact {ref.key} holds {sorted(arrays)}, not {name!r}; pass the refs the "
                              f"embedder/activations services returned")


class LabelerServicer(labeler_pb2_grpc.LabelerServicer):
    """LabelLayer over the streaming labeler; no model to load, so it serves at once."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.device = self.settings.device

    def _read(self, ref: common_pb2.ArtifactRef, name: str, what: str) -> np.ndarray:
        if not ref.key:
            raise invalid_argument(f"{what} has no key; pass the ArtifactRef a service returned")
        with self.runtime.metrics.stage("store_read"):
            arrays = artifacts.get_arrays(self.runtime.store, ref)
        array = _array(arrays, name, ref)
        self.runtime.metrics.add_bytes("read", array.nbytes)
        return array

    def LabelLayer(self, request: labeler_pb2.LabelLayerRequest,
                   context: grpc.ServicerContext) -> labeler_pb2.LabelLayerResponse:
        """Label every unit of one layer; returns the labels artifact and an inline summary."""
        layer = request.layer.strip()
        if not layer:
            raise invalid_argument("no layer name given; set 'layer' (it is recorded with the labels)")
        images, acts = list(request.image_embeddings), list(request.activations)
        if not images or not acts:
            raise invalid_argument("image_embeddings and activations must each list the layer's shard artifacts "
                                   "(one per shard, dataset order)")
        if len(images) != len(acts):
            raise invalid_argument(f"{len(images)} image-embedding shards but {len(acts)} activation shards; send "
                                   f"one of each per dataset shard, in the same order")
        if not request.text_embeddings.key:
            raise invalid_argument("text_embeddings is missing; pass the ref EmbedConcepts returned")
        function = request.similarity.function or DEFAULT_FUNCTION
        if function not in similarity.FUNCTIONS:
            raise invalid_argument(f"unknown similarity function {function!r}; use one of "
                                   f"{', '.join(similarity.FUNCTIONS)}")
        params = dict(sorted(request.similarity.params.items()))
        try:
            resolved = similarity.resolve_params(function, params)
        except (ValueError, TypeError) as exc:
            raise invalid_argument(str(exc)) from None
        top_concepts = request.top_concepts or DEFAULT_TOP_CONCEPTS
        top_images = request.top_images or DEFAULT_TOP_IMAGES
        if top_concepts < 0 or top_images < 0:
            raise invalid_argument("top_concepts and top_images must be positive")
        precision = request.precision or "float32"
        if precision not in PRECISIONS:
            raise invalid_argument(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        for ref in [*images, *acts, request.text_embeddings]:
            if not ref.sha256:
                raise invalid_argument(f"artifact ref {ref.key or '(no key)'} has no sha256; pass the refs the "
                                       f"services returned")

        key = artifacts.content_key(
            "labels", layer=layer, image_embeddings=[r.sha256 for r in images], activations=[r.sha256 for r in acts],
            text_embeddings=request.text_embeddings.sha256, function=function,
            params={k: resolved[k] for k in sorted(resolved)}, top_concepts=top_concepts, top_images=top_images,
            precision=precision)
        existing = artifacts.find_artifact(self.runtime.store, key)
        if existing is not None:
            labels = LayerLabels.from_arrays(artifacts.get_arrays(self.runtime.store, existing))
            self.runtime.metrics.shard("reused")
            return labeler_pb2.LabelLayerResponse(labels=existing, units=_summary(labels), reused=True)

        text = self._read(request.text_embeddings, artifacts.EMBEDDINGS, "text_embeddings")
        shapes_known = all(len(r.shape) == 2 for r in images)
        num_images = sum(int(r.shape[0]) for r in images) if shapes_known else None
        try:
            labeler = StreamingLabeler(function, params, text, device=self.device, precision=precision,
                                       num_images=num_images, max_top_images=max(100, top_images))
        except ValueError as exc:
            raise invalid_argument(str(exc)) from None
        log.info("LabelLayer %s: %d shards, %d concepts, %s", layer, len(images), text.shape[0], function)
        for i, (img_ref, act_ref) in enumerate(zip(images, acts)):
            img = self._read(img_ref, artifacts.EMBEDDINGS, f"image_embeddings[{i}]")
            act = self._read(act_ref, artifacts.ACTIVATIONS, f"activations[{i}]")
            if img.shape[0] != act.shape[0]:
                raise failed_precondition(
                    f"shard {i}: {img.shape[0]} image embeddings but {act.shape[0]} activation rows; both must come "
                    f"from the same shard of a registered probe set")
            with self.runtime.device_lock, self.runtime.metrics.stage("label_add_shard"):
                try:
                    labeler.add_shard(img, act)
                except ValueError as exc:
                    raise failed_precondition(f"shard {i}: {exc}") from None
            self.runtime.metrics.add_images(int(img.shape[0]))
        with self.runtime.device_lock, self.runtime.metrics.stage("label_finish"):
            try:
                labels = labeler.finish(top_concepts=top_concepts, top_images=top_images)
            except ValueError as exc:
                raise invalid_argument(str(exc)) from None
        producer = {"service": SERVICE, "layer": layer, "function": function, "precision": precision,
                    "code_version": artifacts.CODE_VERSION["labels"], "units": str(labels.num_units)}
        with self.runtime.metrics.stage("store_write"):
            ref = artifacts.put_arrays(self.runtime.store, key, labels.to_arrays(), producer, primary="concept_ids")
        self.runtime.metrics.shard("computed")
        return labeler_pb2.LabelLayerResponse(labels=ref, units=_summary(labels), reused=False)

    def warmup(self) -> None:
        """Run a tiny labelling on the device so the first real call pays no start-up cost."""
        rng = np.random.default_rng(0)
        text = rng.normal(size=(3, 8)).astype(np.float32)
        labeler = StreamingLabeler(DEFAULT_FUNCTION, {"top_k": 2}, text, device=self.device, num_images=4)
        labeler.add_shard(rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32))
        labeler.finish(top_concepts=1, top_images=1)
        self.runtime.metrics.set_model_loaded(True)


def _summary(labels: LayerLabels) -> list[labeler_pb2.UnitLabel]:
    return [labeler_pb2.UnitLabel(unit=k, concept_ids=labels.concept_ids[k].tolist(),
                                  scores=labels.scores[k].tolist(), top_images=labels.top_images[k].tolist(),
                                  dead=bool(labels.dead[k])) for k in range(labels.num_units)]


def registrations(runtime: ServiceRuntime) -> tuple[list[Registration], LabelerServicer]:
    """The servicers of this service, for ``run_service``."""
    servicer = LabelerServicer(runtime)
    full_name = labeler_pb2.DESCRIPTOR.services_by_name["Labeler"].full_name
    return [Registration(servicer, labeler_pb2_grpc.add_LabelerServicer_to_server, full_name)], servicer
