"""The Activations gRPC servicer: adapts RPCs to the target zoo and the layer hooks.

ComputeShardActivations runs one forward pass per batch with hooks on every requested layer
(``hooks.LayerRecorder``) and stores one [images, units] float32 artifact per (shard, layer),
keyed by model id, checkpoint digest, layer, pooling, preprocessing, shard digest and code
version (and, for a layer with SAE features, the SAE file's digest and activation). Layers whose
artifact exists are not recomputed; when all exist the call returns at once. CheckActivations
runs the same request on one probe image first, so bad input (unknown model or layer, an SAE
that does not fit the layer, a checkpoint that does not fit) fails before any shard is
computed. User files (checkpoints, model folders, SAEs) come as refs into the store, never as
paths. ListLayers (architecture only: no weights needed) and ListModels expose the zoo.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from contextlib import closing

import grpc
import numpy as np
import torch
from PIL import Image

from cdissect.v1 import activations_pb2, activations_pb2_grpc, common_pb2
from cdissect_activations.checkpoints import CheckpointError
from cdissect_activations.hooks import RepeatedLayerError
from cdissect_activations.pooling import check_pooling
from cdissect_activations.sae import SaeError, SparseAutoencoder, load_sae
from cdissect_activations.zoo import (Target, UnknownLayerError, UnknownModelError, available_models, list_layers,
                                      load_target, resolve_device, resolve_layer)
from cdissect_common import artifacts, model_specs
from cdissect_common.downloads import DownloadError
from cdissect_common.devices import BatchCollator, default_batch_size, one_torch_thread
from cdissect_common.errors import failed_precondition, invalid_argument, require_shard_ref
from cdissect_common.images import SHARD_IMAGE_FIX, check_bad_image_policy
from cdissect_common.manifest import read_shard
from cdissect_common.model_cache import ModelCache
from cdissect_common.prefetch import prefetched_batches
from cdissect_common.server import Registration, ServiceRuntime
from cdissect_common.vocabulary import TARGET_PRECISIONS
from cdissect_common.userfiles import materialize, server_path

log = logging.getLogger("cdissect.activations")
SERVICE = "activations"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def preprocess_id(target: Target) -> str:
    """A stable description of the target's preprocessing (no memory addresses), for keys."""
    return _ADDRESS.sub("", " ".join(repr(target.preprocess).split()))


class ActivationsServicer(activations_pb2_grpc.ActivationsServicer):
    """Activations RPCs over one process-wide cache of loaded target models."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.device = resolve_device(self.settings.device)
        self.batch_size = self.settings.batch_size or default_batch_size(self.device)
        self.collate = BatchCollator(self.device)
        self.models: ModelCache[Target] = ModelCache(
            on_load=lambda k, m: runtime.metrics.set_model_loaded(True), max_models=self.settings.max_loaded_models,
            on_evict=lambda k, m: log.info("dropped target %s (max_loaded_models=%d)", k[0],
                                           self.settings.max_loaded_models))
        self.saes: ModelCache[SparseAutoencoder] = ModelCache(max_models=self.settings.max_loaded_models)
        self._shapes: ModelCache[dict[str, list[int]]] = ModelCache(max_models=4 * self.settings.max_loaded_models)

    def target(self, model: str, weights: str, model_files=(), architecture_only: bool = False) -> Target:
        """The loaded target for a request (default: the served model).

        A model string naming a path is loaded from the service's copy of the request's
        `model_files` (uploaded by the client through the store), or else only from inside the
        operator's model folders (`model_dirs`, cdissect_common.userfiles.server_path); the
        client's path itself is never opened. The served model (CDISSECT_MODEL) is the operator's own.
        """
        name = (model or self.settings.model).strip()
        if not name:
            raise invalid_argument("no target model given and the service serves none; set the request's model "
                                   "(e.g. resnet50) or CDISSECT_MODEL")
        shown = name
        if model.strip():
            try:
                name, weights = self._local_model(name, weights, model_files)
            except (ValueError, LookupError) as exc:
                raise invalid_argument(str(exc)) from None

        def load() -> Target:
            with self.runtime.metrics.stage("model_load"):
                log.info("loading target %s (weights %s) on %s%s", name, weights or "default", self.device,
                         " (architecture only)" if architecture_only else "")
                return load_target(name, weights or None, self.device, architecture_only=architecture_only)

        try:
            target = self.models.get((name, weights, str(self.device), architecture_only), load)
            return target if target.name == shown else dataclasses.replace(target, name=shown)
        except (UnknownModelError, LookupError, CheckpointError) as exc:
            raise invalid_argument(str(exc)) from None
        except (DownloadError, FileNotFoundError) as exc:
            raise failed_precondition(f"cannot load weights of {name!r}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise invalid_argument(f"cannot load target {name!r}: {exc}") from None

    def _local_model(self, name: str, weights: str, model_files) -> tuple[str, str]:
        """(model, weights) with a path in them replaced by the service-local copy of the request's
        uploaded files, or by the same path checked to lie in a model folder."""
        spec = model_specs.parse_model(name, weights)
        if not spec.path:
            if model_files:
                raise ValueError(f"model {name!r} names no file or folder, but the request carries user files")
            return name, weights
        if model_files:
            local = materialize(self.runtime.store, list(model_files), spec.is_folder, self.settings.cache_dir)
        else:
            local = server_path(spec.path, self.settings.model_dirs)
        return spec.model_string(str(local)), "" if spec.path == (weights or "").strip() else weights

    def features(self, request: activations_pb2.ComputeShardActivationsRequest,
                 layers: list[str]) -> dict[str, SparseAutoencoder]:
        """{layer: SAE} of the request's features (empty without), validated and on the device."""
        if not request.HasField("features") or not request.features.kind:
            return {}
        features = request.features
        if features.kind != "sae":
            raise invalid_argument(f"unknown features kind {features.kind!r}; the one kind is 'sae'")
        if layers != [features.layer]:
            raise invalid_argument(f"SAE features apply to exactly one layer: request the single layer "
                                   f"{features.layer!r} (got {', '.join(layers)})")
        def load() -> SparseAutoencoder:
            path = materialize(self.runtime.store, [features.file], False, self.settings.cache_dir)
            return load_sae(path, features.activation, features.k).to(self.device)

        try:
            key = (features.file.ref.sha256, features.activation, features.k, str(self.device))
            return {features.layer: self.saes.get(key, load)}
        except (SaeError, ValueError) as exc:
            raise invalid_argument(f"SAE {features.file.name or 'file'}: {exc}") from None

    def _check_layers(self, target: Target, layers: list[str]) -> None:
        for layer in layers:
            try:
                resolve_layer(target.model, layer, target.name)
            except UnknownLayerError as exc:
                raise invalid_argument(str(exc)) from None

    def _request_layers(self, request: activations_pb2.ComputeShardActivationsRequest
                        ) -> tuple[list[str], str, str, str]:
        """(layers, pooling, token pooling, target precision) of a request, validated."""
        layers = [l.strip() for l in request.layers]
        if not layers or not all(layers):
            raise invalid_argument("no layers requested (or a blank name); name at least one, e.g. 'layer4' "
                                   "(see ListLayers)")
        if len(set(layers)) != len(layers):
            raise invalid_argument(f"layer list repeats a name: {layers}; list each layer once")
        pooling, token_pooling = request.pooling or "avg", request.token_pooling or "cls"
        # float32 (the reference), or bf16 autocast: matrix products and convolutions in bf16,
        # reductions and normalisation in float32 (speed on GPUs).
        precision = request.precision or "float32"
        if precision not in TARGET_PRECISIONS:
            raise invalid_argument(f"precision must be one of {', '.join(TARGET_PRECISIONS)}, got "
                                   f"{request.precision!r}")
        try:
            check_pooling(pooling, token_pooling)
        except ValueError as exc:
            raise invalid_argument(str(exc)) from None
        return layers, pooling, token_pooling, precision

    def CheckActivations(self, request: activations_pb2.ComputeShardActivationsRequest,
                         context: grpc.ServicerContext) -> activations_pb2.CheckActivationsResponse:
        """Everything ComputeShardActivations checks, plus one probe image through the hooks (and
        the SAE); answers the unit count of each layer. Writes nothing."""
        layers, pooling, token_pooling, precision = self._request_layers(request)
        check_bad_image_policy(request.on_bad_image)
        target = self.target(request.model, request.weights, request.model_files)
        self._check_layers(target, layers)
        features = self.features(request, layers)
        probe = target.preprocess(Image.new("RGB", (224, 224), (127, 127, 127))).unsqueeze(0)
        try:
            with self.runtime.device_lock:
                out = target.recorder(layers, pooling, token_pooling, features).record(probe)
        except SaeError as exc:
            sae = features[layers[0]]
            raise invalid_argument(f"SAE {request.features.file.name} ({sae.describe()}) does not fit layer "
                                   f"{layers[0]!r} of {target.name}: {exc}") from None
        except (ValueError, TypeError, RuntimeError) as exc:
            raise invalid_argument(f"{target.name} cannot give the requested activations: {exc}") from None
        return activations_pb2.CheckActivationsResponse(
            units=[int(out[layer].shape[1]) for layer in layers], model_id=target.model_id,
            checkpoint_sha256=target.checkpoint_sha256)

    @staticmethod
    def _features_key(request: activations_pb2.ComputeShardActivationsRequest,
                      features: dict[str, SparseAutoencoder], layer: str) -> dict[str, str]:
        """Key fields of a layer's SAE features (none for plain layers, so their keys never change)."""
        if layer not in features:
            return {}
        sae = features[layer]
        return {"features": f"sae:{request.features.file.ref.sha256}:{sae.activation}:{sae.k}"}

    def ComputeShardActivations(self, request: activations_pb2.ComputeShardActivationsRequest,
                                context: grpc.ServicerContext) -> activations_pb2.ComputeShardActivationsResponse:
        """One artifact per requested layer for one shard; existing ones are reused."""
        check_bad_image_policy(request.on_bad_image)  # validated; registration decided the skipping
        layers, pooling, token_pooling, precision = self._request_layers(request)
        shard = request.shard
        require_shard_ref(shard)
        try:
            target = self.target(request.model, request.weights, request.model_files)
            self._check_layers(target, layers)
            features = self.features(request, layers)
            keys = {layer: artifacts.content_key(
                "activations", model_id=target.model_id, checkpoint_sha256=target.checkpoint_sha256, layer=layer,
                pooling=pooling, token_pooling=token_pooling, preprocess_id=preprocess_id(target),
                shard_sha256=shard.ref.sha256, **self._features_key(request, features, layer),
                **({"precision": precision} if precision != "float32" else {}))
                for layer in layers}
            refs = {layer: artifacts.find_artifact(self.runtime.store, key) for layer, key in keys.items()}
            missing = [layer for layer in layers if refs[layer] is None]
            reused = len(layers) - len(missing)
            if missing:
                log.info("ComputeShardActivations shard=%d (%d images) layers=%s started", shard.index,
                         len(shard.images), ",".join(missing))
                computed = self._compute(target, missing, pooling, token_pooling, shard, features, precision)
                producer = {"service": SERVICE, "model_id": target.model_id,
                            "checkpoint_sha256": target.checkpoint_sha256, "device": str(self.device),
                            "pooling": pooling, "token_pooling": token_pooling, "shard_sha256": shard.ref.sha256,
                            "code_version": artifacts.CODE_VERSION["activations"], "precision": precision,
                            **({"features": f"sae {next(iter(features.values())).describe()}"} if features else {})}
                with self.runtime.metrics.stage("store_write"):
                    for layer in missing:
                        refs[layer] = artifacts.put_arrays(self.runtime.store, keys[layer],
                                                           {artifacts.ACTIVATIONS: computed[layer]},
                                                           {**producer, "layer": layer})
                        self.runtime.metrics.add_bytes("write", computed[layer].nbytes)
                log.info("ComputeShardActivations shard=%d done", shard.index)
            self.runtime.metrics.shard("reused" if not missing else "computed")
            # skipped_images stays 0: registration decides skipping (see cdissect_common.images).
            return activations_pb2.ComputeShardActivationsResponse(
                activations=[refs[layer] for layer in layers], reused=reused)
        except Exception:
            self.runtime.metrics.shard("failed")
            raise

    def _compute(self, target: Target, layers: list[str], pooling: str, token_pooling: str,
                 shard: common_pb2.Shard, features: dict[str, SparseAutoencoder],
                 precision: str = "float32") -> dict[str, np.ndarray]:
        with self.runtime.metrics.stage("read_shard"):
            pairs = read_shard(self.runtime.store, shard)
        self.runtime.metrics.add_bytes("read", sum(len(b) for _, b in pairs))
        parts: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
        recorder = target.recorder(layers, pooling, token_pooling, features)
        batches = prefetched_batches([(e.name, b) for e, b in pairs], self.batch_size, target.preprocess,
                                     self.collate, where=f"shard {shard.index}",
                                     max_pixels=self.settings.max_image_pixels, fix=SHARD_IMAGE_FIX,
                                     workers=self.settings.prefetch_workers, depth=self.settings.prefetch_depth,
                                     thread_init=one_torch_thread)
        with closing(batches):
            for batch in batches:
                with self.runtime.device_lock, self.runtime.metrics.stage("forward"), \
                        torch.autocast(self.device.type, torch.bfloat16, enabled=precision == "bfloat16"):
                    with recorder:
                        try:
                            out = recorder.record(batch.data.tensor())
                        except RepeatedLayerError as exc:
                            raise invalid_argument(f"{target.name}: {exc}") from None
                    for layer in layers:
                        parts[layer].append(out[layer].float().cpu().numpy())
                self.runtime.metrics.add_images(len(batch))
        return {layer: np.concatenate(p).astype(np.float32) for layer, p in parts.items()}

    def ListLayers(self, request: activations_pb2.ListLayersRequest,
                   context: grpc.ServicerContext) -> activations_pb2.ListLayersResponse:
        """Every hookable module of the model with its per-image output shape (one probe forward).

        The architecture is built without its weights (random init): nothing is downloaded but,
        for hf: hub ids, the model's config.
        """
        target = self.target(request.model, request.weights, request.model_files, architecture_only=True)
        shapes = self._output_shapes(target)
        return activations_pb2.ListLayersResponse(layers=[
            activations_pb2.LayerInfo(name=info.name, kind=info.kind, output_shape=shapes.get(info.name, []))
            for info in list_layers(target.model)])

    def _output_shapes(self, target: Target) -> dict[str, list[int]]:
        """Output shape of every module on a grey probe image (modules not called get none)."""
        return self._shapes.get((target.model_id, target.checkpoint_sha256), lambda: self._probe_shapes(target))

    def _probe_shapes(self, target: Target) -> dict[str, list[int]]:
        names = {info.name for info in list_layers(target.model)}
        shapes: dict[str, list[int]] = {}
        handles = []
        for name in names:
            module = resolve_layer(target.model, name, target.name)

            def hook(_m: torch.nn.Module, _i: object, output: object, name: str = name) -> None:
                tensor = output[0] if isinstance(output, (tuple, list)) and output else output
                if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1:
                    shapes[name] = [int(s) for s in tensor.shape[1:]]

            handles.append(module.register_forward_hook(hook))
        try:
            probe = target.preprocess(Image.new("RGB", (224, 224), (127, 127, 127))).unsqueeze(0)
            param = next(target.model.parameters(), None)
            if param is not None:
                probe = probe.to(param.device, param.dtype)
            with self.runtime.device_lock, torch.no_grad():
                target.model(probe)
        except Exception as exc:  # noqa: BLE001 - shapes are optional; the names still help
            log.warning("probe forward of %s failed (%s); listing layers without shapes", target.name, exc)
        finally:
            for handle in handles:
                handle.remove()
        return shapes

    def ListModels(self, request: common_pb2.ListModelsRequest,
                   context: grpc.ServicerContext) -> common_pb2.ListModelsResponse:
        """Target models the zoo knows, and the served default."""
        return common_pb2.ListModelsResponse(models=available_models(every=request.all), served=self.settings.model)

    def warmup(self) -> None:
        """Load the served model (CDISSECT_MODEL) and run one probe forward pass through it."""
        if self.settings.model:
            self._output_shapes(self.target("", ""))  # the served model


def registrations(runtime: ServiceRuntime) -> tuple[list[Registration], ActivationsServicer]:
    """The servicers of this service, for ``run_service``."""
    servicer = ActivationsServicer(runtime)
    full_name = activations_pb2.DESCRIPTOR.services_by_name["Activations"].full_name
    return [Registration(servicer, activations_pb2_grpc.add_ActivationsServicer_to_server, full_name)], servicer
