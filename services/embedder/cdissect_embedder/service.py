"""The Embedder gRPC servicer: adapts RPCs to the CLIP backends (``backends.registry``).

Shard and concept RPCs write L2-normalised embeddings to the store under content keys
(model id, checkpoint digest, preprocessing, precision, input digests, code version) and are
idempotent: an existing artifact is returned at once with ``reused=true``. The inline RPCs
return vectors directly, for other projects that want CLIP as a service.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import grpc
import numpy as np
import torch

from cdissect.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc
from cdissect_common import artifacts
from cdissect_common.batching import MicroBatcher
from cdissect_common.devices import BatchCollator, default_batch_size, one_torch_thread
from cdissect_common.errors import ServiceError, failed_precondition, invalid_argument, require_shard_ref
from cdissect_common.images import SHARD_IMAGE_FIX, check_bad_image_policy
from cdissect_common.manifest import read_shard
from cdissect_common.model_cache import ModelCache
from cdissect_common.prefetch import available_cores, prefetched_batches, prepare_image
from cdissect_common.model_specs import join_checkpoint, split_checkpoint
from cdissect_common.userfiles import request_checkpoint
from cdissect_common.server import Registration, ServiceRuntime
from cdissect_embedder.backends.base import ClipBackend, fill_templates, resolve_device
from cdissect_embedder.backends.registry import available_models, load_backend

log = logging.getLogger("cdissect.embedder")
SERVICE = "embedder"
MAX_INLINE_ITEMS = 4096
TEXT_CHUNK = 1024


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    """Embedder RPCs over one process-wide cache of loaded backends."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.device = resolve_device(self.settings.device)
        self.batch_size = self.settings.batch_size or default_batch_size(self.device)
        self.collate = BatchCollator(self.device)
        self.models: ModelCache[ClipBackend] = ModelCache(
            on_load=lambda key, model: runtime.metrics.set_model_loaded(True),
            max_models=self.settings.max_loaded_models,
            on_evict=lambda key, model: log.info("dropped CLIP model %s (max_loaded_models=%d)", key[0],
                                                 self.settings.max_loaded_models))
        # Concurrent small inline calls share forward passes (cdissect_common.batching).
        self.inline_max = self.settings.inline_batch_max or self.batch_size
        wait_s = self.settings.inline_batch_wait_seconds
        self.image_batcher: MicroBatcher[torch.Tensor, np.ndarray] = MicroBatcher(
            self._encode_image_rows, self.inline_max, wait_s, name="inline-images")
        self.text_batcher: MicroBatcher[str, np.ndarray] = MicroBatcher(
            self._encode_text_rows, self.inline_max, wait_s, name="inline-texts")
        self.inline_prepare = ThreadPoolExecutor(self.settings.prefetch_workers or available_cores(),
                                                 thread_name_prefix="inline-prepare", initializer=one_torch_thread)

    # ---------------------------------------------------------------- helpers
    def backend(self, model: str, precision: str = "",
                model_file: common_pb2.ArtifactRef | None = None) -> ClipBackend:
        """The loaded backend for a request's model (default: the served model) and precision.

        A checkpoint comes as an uploaded file (`model_file`; `model` then names only the backend
        and architecture, "" for OpenAI's format) or as a server path in `model`, accepted only
        inside the model folders (cdissect_common.userfiles). The served model is the operator's own.
        """
        requested = model.strip()
        uploaded = model_file is not None and bool(model_file.key)
        name = requested if (requested or uploaded) else self.settings.model.strip()
        if not name and not uploaded:
            raise invalid_argument("no CLIP model given and the embedder serves none; set the request's model "
                                   "(e.g. ViT-B/16, or upload a checkpoint with the cdissect CLI) or CDISSECT_MODEL")
        if requested or uploaded:
            name_part, path = split_checkpoint(name)
            local = request_checkpoint(self.runtime.store, model_file, path, self.settings.model_dirs,
                                       self.settings.cache_dir)
            if local is not None:
                name = join_checkpoint(name_part, local)
        precision = precision.strip() or None

        def load() -> ClipBackend:
            with self.runtime.metrics.stage("model_load"):
                log.info("loading CLIP model %s on %s (precision %s)", name, self.device, precision or "default")
                loaded = load_backend(name, self.device, precision)
                loaded.image_batch_size = max(loaded.image_batch_size, self.batch_size)
                return loaded

        try:
            return self.models.get((name, str(self.device), precision), load)
        except (LookupError, FileNotFoundError, ValueError, TypeError) as exc:
            raise invalid_argument(f"cannot load CLIP model {name!r}: {exc}") from None
        except RuntimeError as exc:  # weights unavailable (offline) and similar
            raise failed_precondition(f"cannot load CLIP model {name!r}: {exc}") from None

    def _embed_images(self, backend: ClipBackend, items: list[tuple[str, bytes]], where: str = "",
                      **fix: str) -> np.ndarray:
        """Decode+preprocess in prefetch workers, encode batch by batch under the device lock."""
        parts: list[np.ndarray] = []
        batches = prefetched_batches(items, self.batch_size, backend.preprocess, self.collate, where=where,
                                     max_pixels=self.settings.max_image_pixels, workers=self.settings.prefetch_workers,
                                     depth=self.settings.prefetch_depth, thread_init=one_torch_thread, **fix)
        with closing(batches):
            for batch in batches:
                with self.runtime.device_lock, self.runtime.metrics.stage("encode_images"):
                    parts.append(backend.encode_images(batch.data.tensor()).numpy())
                self.runtime.metrics.add_images(len(batch))
        return np.concatenate(parts).astype(np.float32)

    def _encode_texts(self, backend: ClipBackend, texts: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), TEXT_CHUNK):
            with self.runtime.device_lock, self.runtime.metrics.stage("encode_texts"):
                out.append(backend.encode_texts(list(texts[start:start + TEXT_CHUNK]), list(templates) or None).numpy())
        return np.concatenate(out).astype(np.float32)

    def _encode_image_rows(self, backend: ClipBackend, tensors: list[torch.Tensor]) -> np.ndarray:
        """One inline batch: the preprocessed images of several calls -> their embedding rows."""
        batch = self.collate(tensors)
        with self.runtime.device_lock, self.runtime.metrics.stage("encode_images"):
            rows = backend.encode_images(batch.tensor()).numpy()
        self.runtime.metrics.add_images(len(tensors))
        return rows

    def _encode_text_rows(self, key: tuple[ClipBackend, tuple[str, ...]], texts: list[str]) -> np.ndarray:
        """One inline batch: the texts of several calls with the same templates -> their rows."""
        backend, templates = key
        return self._encode_texts(backend, texts, templates)

    def _producer(self, backend: ClipBackend, kind: str, **extra: object) -> dict[str, str]:
        info = {"service": SERVICE, **backend.describe(), "device": str(self.device),
                "code_version": artifacts.CODE_VERSION[kind]}
        info.update({k: str(v) for k, v in extra.items()})
        return info

    def _store(self, key: str, array: np.ndarray, producer: dict[str, str]) -> common_pb2.ArtifactRef:
        with self.runtime.metrics.stage("store_write"):
            ref = artifacts.put_arrays(self.runtime.store, key, {artifacts.EMBEDDINGS: array}, producer)
        self.runtime.metrics.add_bytes("write", array.nbytes)
        return ref

    # ---------------------------------------------------------------- RPCs
    def EmbedImageShard(self, request: embedder_pb2.EmbedImageShardRequest,
                        context: grpc.ServicerContext) -> embedder_pb2.EmbedResponse:
        """Embed every image of one shard; returns the [n, d] artifact (reused if it exists)."""
        check_bad_image_policy(request.on_bad_image)  # validated; registration decided the skipping
        shard = request.shard
        require_shard_ref(shard)
        try:
            backend = self.backend(request.model, request.precision, request.model_file)
            _require_image_tower(backend)
            key = artifacts.content_key("embeddings/image", model_id=backend.model_id,
                                        checkpoint_sha256=backend.checkpoint_sha256,
                                        preprocess_id=backend.preprocess_id, dtype=backend.dtype,
                                        shard_sha256=shard.ref.sha256)
            existing = artifacts.find_artifact(self.runtime.store, key)
            if existing is not None:
                self.runtime.metrics.shard("reused")
                return _embed_response(existing, reused=True)
            log.info("EmbedImageShard shard=%d (%d images) started", shard.index, len(shard.images))
            with self.runtime.metrics.stage("read_shard"):
                pairs = read_shard(self.runtime.store, shard)
            self.runtime.metrics.add_bytes("read", sum(len(b) for _, b in pairs))
            emb = self._embed_images(backend, [(e.name, b) for e, b in pairs], where=f"shard {shard.index}",
                                     fix=SHARD_IMAGE_FIX)
            ref = self._store(key, emb, self._producer(backend, "embeddings/image", shard_sha256=shard.ref.sha256))
            self.runtime.metrics.shard("computed")
            log.info("EmbedImageShard shard=%d done", shard.index)
            return _embed_response(ref, reused=False)
        except Exception:
            self.runtime.metrics.shard("failed")
            raise

    def EmbedConcepts(self, request: embedder_pb2.EmbedConceptsRequest,
                      context: grpc.ServicerContext) -> embedder_pb2.EmbedResponse:
        """Embed a concept list (raw strings, or averaged over templates) into a [C, d] artifact."""
        concepts = list(request.concepts)
        _check_texts(concepts, "concept list", "concept")
        backend = self.backend(request.model, request.precision, request.model_file)
        digest = hashlib.sha256("\n".join(concepts).encode()).hexdigest()
        key = artifacts.content_key("embeddings/text", model_id=backend.model_id,
                                    checkpoint_sha256=backend.checkpoint_sha256, dtype=backend.dtype,
                                    concepts_sha256=digest, templates=list(request.prompt_templates))
        existing = artifacts.find_artifact(self.runtime.store, key)
        if existing is not None:
            return embedder_pb2.EmbedResponse(embeddings=existing, reused=True)
        emb = self._texts_or_error(backend, concepts, request.prompt_templates)
        ref = self._store(key, emb, self._producer(backend, "embeddings/text", concepts_sha256=digest,
                                                   rows=len(concepts)))
        return embedder_pb2.EmbedResponse(embeddings=ref, reused=False)

    def _texts_or_error(self, backend: ClipBackend, texts: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        try:
            return self._encode_texts(backend, texts, templates)
        except (ValueError, TypeError) as exc:
            raise invalid_argument(str(exc)) from None

    def EmbedTexts(self, request: embedder_pb2.EmbedTextsRequest, context: grpc.ServicerContext) -> embedder_pb2.Vectors:
        """Inline text embeddings (always L2-normalised: the backends return unit vectors)."""
        texts = list(request.texts)
        _check_texts(texts, "text list", "text")
        if len(texts) > MAX_INLINE_ITEMS:
            raise invalid_argument(f"{len(texts)} texts in one inline call; send at most {MAX_INLINE_ITEMS} per "
                                   f"call or use EmbedConcepts")
        backend = self.backend(request.model, model_file=request.model_file)
        templates = tuple(request.prompt_templates)
        try:
            fill_templates(["x"], templates)  # a bad template fails this call alone, before it joins a batch
        except ValueError as exc:
            raise invalid_argument(str(exc)) from None
        if len(texts) >= self.inline_max:
            return self._vectors(backend, self._texts_or_error(backend, texts, templates))
        try:
            rows = self.text_batcher.submit((backend, templates), texts)
        except (ValueError, TypeError) as exc:
            raise invalid_argument(str(exc)) from None
        return self._vectors(backend, np.stack(rows))

    def EmbedImages(self, request: embedder_pb2.EmbedImagesRequest,
                    context: grpc.ServicerContext) -> embedder_pb2.Vectors:
        """Inline image embeddings of encoded images (JPEG/PNG bytes), L2-normalised."""
        if not request.images:
            raise invalid_argument("no images in the request; send encoded JPEG/PNG bytes in 'images'")
        if len(request.images) > MAX_INLINE_ITEMS:
            raise invalid_argument(f"{len(request.images)} images in one inline call; send at most "
                                   f"{MAX_INLINE_ITEMS} or register a dataset")
        backend = self.backend(request.model, model_file=request.model_file)
        _require_image_tower(backend)
        items = [(f"images[{i}]", b) for i, b in enumerate(request.images)]
        if len(items) >= self.inline_max:  # a batch's worth or more: the shard path, with prefetching
            return self._vectors(backend, self._embed_images(backend, items))
        # Decoded by the prefetch workers' code on a shared pool; a bad image fails this call alone,
        # before it joins a batch.
        max_pixels = self.settings.max_image_pixels
        tensors = list(self.inline_prepare.map(
            lambda item: prepare_image(item, backend.preprocess, max_pixels=max_pixels), items))
        return self._vectors(backend, np.stack(self.image_batcher.submit(backend, tensors)))

    def ListModels(self, request: common_pb2.ListModelsRequest,
                   context: grpc.ServicerContext) -> common_pb2.ListModelsResponse:
        """The CLIP models this embedder can load, and the one it serves by default."""
        return common_pb2.ListModelsResponse(models=available_models(), served=self.settings.model)

    def _vectors(self, backend: ClipBackend, array: np.ndarray) -> embedder_pb2.Vectors:
        return embedder_pb2.Vectors(vectors=[embedder_pb2.Vector(values=row.tolist()) for row in array],
                                    model_id=backend.model_id, checkpoint_sha256=backend.checkpoint_sha256,
                                    dtype=backend.dtype, device=str(self.device))

    def warmup(self) -> None:
        """Load the served model (CDISSECT_MODEL) and run one image and one text through it."""
        if not self.settings.model:
            return
        import io

        from PIL import Image

        backend = self.backend("")  # the served model
        grey = io.BytesIO()
        Image.new("RGB", (224, 224), (127, 127, 127)).save(grey, format="PNG")
        self._embed_images(backend, [("warm-up.png", grey.getvalue())])
        self._encode_texts(backend, ["warm-up"], [])


def _require_image_tower(backend: ClipBackend) -> None:
    if not backend.supports_images:
        raise invalid_argument(f"{backend.model_id} is a text-only model and cannot embed images; use a CLIP model "
                               f"such as ViT-B/16 for images")


def _check_texts(texts: list[str], what: str, item: str) -> None:
    if not texts:
        raise invalid_argument(f"empty {what}: send at least one {item} (an empty concept file yields none)")
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    if blank:
        raise invalid_argument(f"{item} #{blank[0]} of the {what} is blank ({len(blank)} blank in all); drop "
                               f"blank lines")


def _embed_response(ref: common_pb2.ArtifactRef, reused: bool) -> embedder_pb2.EmbedResponse:
    """The response of a shard RPC (skipped_images stays 0: registration decides skipping, see images.py)."""
    return embedder_pb2.EmbedResponse(embeddings=ref, reused=reused)


def registrations(runtime: ServiceRuntime) -> tuple[list[Registration], EmbedderServicer]:
    """The servicers of this service, for ``run_service``."""
    servicer = EmbedderServicer(runtime)
    full_name = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
    return [Registration(servicer, embedder_pb2_grpc.add_EmbedderServicer_to_server, full_name,
                         inline_methods=("EmbedTexts", "EmbedImages"))], servicer


__all__ = ["EmbedderServicer", "registrations", "ServiceError"]
