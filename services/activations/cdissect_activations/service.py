"""The Activations gRPC servicer: adapts RPCs to the target zoo and the layer hooks.

ComputeShardActivations runs one forward pass per batch with hooks on every requested layer
(``hooks.LayerRecorder``) and stores one [images, units] float32 artifact per (shard, layer),
keyed by model id, checkpoint digest, layer, pooling, preprocessing, shard digest and code
version. Layers whose artifact exists are not recomputed; when all exist the call returns at
once. ListLayers and ListModels expose the zoo for discovery.
"""
from __future__ import annotations

import logging
import re

import grpc
import numpy as np
import torch

from cdissect.v1 import activations_pb2, activations_pb2_grpc, common_pb2
from cdissect_activations.hooks import LayerRecorder, RepeatedLayerError
from cdissect_activations.pooling import check_pooling
from cdissect_activations.zoo import (Target, UnknownLayerError, UnknownModelError, available_models, list_layers,
                                      load_target, resolve_device, resolve_layer)
from cdissect_common import artifacts
from cdissect_common.downloads import DownloadError
from cdissect_common.errors import failed_precondition, invalid_argument, require_shard_ref
from cdissect_common.images import SHARD_IMAGE_FIX, check_bad_image_policy, prepared_batches
from cdissect_common.manifest import read_shard
from cdissect_common.model_cache import ModelCache
from cdissect_common.userfiles import looks_like_path, request_checkpoint, split_checkpoint
from cdissect_common.server import Registration, ServiceRuntime

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
        self.models: ModelCache[Target] = ModelCache(
            on_load=lambda k, m: runtime.metrics.set_model_loaded(True), max_models=self.settings.max_loaded_models,
            on_evict=lambda k, m: log.info("dropped target %s (max_loaded_models=%d)", k[0],
                                           self.settings.max_loaded_models))
        self._shapes: ModelCache[dict[str, list[int]]] = ModelCache(max_models=4 * self.settings.max_loaded_models)

    def target(self, model: str, weights: str, weights_file: common_pb2.ArtifactRef | None = None) -> Target:
        """The loaded target for a request (default: the served model).

        A checkpoint comes as an uploaded file (`weights_file`) or as a server path in `model`
        ('resnet50:/models/x.pth') or `weights`, accepted only inside the model folders
        (cdissect_common.userfiles). The served model (CDISSECT_MODEL) is the operator's own.
        """
        name, weights = (model or self.settings.model).strip(), (weights or "").strip()
        if not name:
            raise invalid_argument("no target model given and the service serves none; set the request's model "
                                   "(e.g. resnet50) or CDISSECT_MODEL")
        uploaded = weights_file is not None and bool(weights_file.key)
        if model.strip():
            arch, model_path = split_checkpoint(name)
            weights_path = weights if looks_like_path(weights) else None
            if sum(map(bool, (model_path, weights_path, uploaded))) > 1 or (uploaded and weights):
                raise invalid_argument(f"the request names the weights of {arch!r} more than once (model {model!r}, "
                                       f"weights {weights!r} and an uploaded weights_file); send one of them")
            local = request_checkpoint(self.runtime.store, weights_file, model_path or weights_path,
                                       self.settings.model_dirs, self.settings.cache_dir)
            if local is not None:
                name, weights = arch, str(local)

        def load() -> Target:
            with self.runtime.metrics.stage("model_load"):
                log.info("loading target %s (weights %s) on %s", name, weights or "default", self.device)
                return load_target(name, weights or None, self.device)

        try:
            return self.models.get((name, weights, str(self.device)), load)
        except UnknownModelError as exc:
            raise invalid_argument(str(exc)) from None
        except (DownloadError, FileNotFoundError) as exc:
            raise failed_precondition(f"cannot load weights of {name!r}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise invalid_argument(f"cannot load target {name!r}: {exc}") from None

    def _check_layers(self, target: Target, layers: list[str]) -> None:
        for layer in layers:
            try:
                resolve_layer(target.model, layer, target.name)
            except UnknownLayerError as exc:
                raise invalid_argument(str(exc)) from None

    def ComputeShardActivations(self, request: activations_pb2.ComputeShardActivationsRequest,
                                context: grpc.ServicerContext) -> activations_pb2.ComputeShardActivationsResponse:
        """One artifact per requested layer for one shard; existing ones are reused."""
        check_bad_image_policy(request.on_bad_image)  # validated; registration decided the skipping
        layers = [l.strip() for l in request.layers]
        if not layers or not all(layers):
            raise invalid_argument("no layers requested (or a blank name); name at least one, e.g. 'layer4' "
                                   "(see ListLayers)")
        if len(set(layers)) != len(layers):
            raise invalid_argument(f"layer list repeats a name: {layers}; list each layer once")
        pooling, token_pooling = request.pooling or "avg", request.token_pooling or "cls"
        try:
            check_pooling(pooling, token_pooling)
        except ValueError as exc:
            raise invalid_argument(str(exc)) from None
        shard = request.shard
        require_shard_ref(shard)
        try:
            target = self.target(request.model, request.weights, request.weights_file)
            self._check_layers(target, layers)
            keys = {layer: artifacts.content_key(
                "activations", model_id=target.model_id, checkpoint_sha256=target.checkpoint_sha256, layer=layer,
                pooling=pooling, token_pooling=token_pooling, preprocess_id=preprocess_id(target),
                shard_sha256=shard.ref.sha256) for layer in layers}
            refs = {layer: artifacts.find_artifact(self.runtime.store, key) for layer, key in keys.items()}
            missing = [layer for layer in layers if refs[layer] is None]
            reused = len(layers) - len(missing)
            if missing:
                log.info("ComputeShardActivations shard=%d (%d images) layers=%s started", shard.index,
                         len(shard.images), ",".join(missing))
                computed = self._compute(target, missing, pooling, token_pooling, shard)
                producer = {"service": SERVICE, "model_id": target.model_id,
                            "checkpoint_sha256": target.checkpoint_sha256, "device": str(self.device),
                            "pooling": pooling, "token_pooling": token_pooling, "shard_sha256": shard.ref.sha256,
                            "code_version": artifacts.CODE_VERSION["activations"]}
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
                 shard: common_pb2.Shard) -> dict[str, np.ndarray]:
        with self.runtime.metrics.stage("read_shard"):
            pairs = read_shard(self.runtime.store, shard)
        self.runtime.metrics.add_bytes("read", sum(len(b) for _, b in pairs))
        parts: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
        recorder = LayerRecorder(target.model, layers, pooling, token_pooling, model_name=target.name)
        batches = prepared_batches([(e.name, b) for e, b in pairs], self.settings.batch_size, target.preprocess,
                                   f"shard {shard.index}", self.settings.max_image_pixels, fix=SHARD_IMAGE_FIX)
        for tensors in batches:
            batch = torch.stack(tensors)
            with self.runtime.device_lock, self.runtime.metrics.stage("forward"):
                with recorder:
                    try:
                        out = recorder.record(batch)
                    except RepeatedLayerError as exc:
                        raise invalid_argument(f"{target.name}: {exc}") from None
                for layer in layers:
                    parts[layer].append(out[layer].float().cpu().numpy())
            self.runtime.metrics.add_images(len(tensors))
        return {layer: np.concatenate(p).astype(np.float32) for layer, p in parts.items()}

    def ListLayers(self, request: activations_pb2.ListLayersRequest,
                   context: grpc.ServicerContext) -> activations_pb2.ListLayersResponse:
        """Every hookable module of the model with its per-image output shape (one probe forward)."""
        target = self.target(request.model, request.weights, request.weights_file)
        shapes = self._output_shapes(target)
        return activations_pb2.ListLayersResponse(layers=[
            activations_pb2.LayerInfo(name=info.name, kind=info.kind, output_shape=shapes.get(info.name, []))
            for info in list_layers(target.model)])

    def _output_shapes(self, target: Target) -> dict[str, list[int]]:
        """Output shape of every module on a grey probe image (modules not called get none)."""
        return self._shapes.get((target.model_id, target.checkpoint_sha256), lambda: self._probe_shapes(target))

    def _probe_shapes(self, target: Target) -> dict[str, list[int]]:
        from PIL import Image

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
        return common_pb2.ListModelsResponse(models=available_models(), served=self.settings.model)

    def warmup(self) -> None:
        """Load the served model (CDISSECT_MODEL) and run one probe forward pass through it."""
        if self.settings.model:
            self._output_shapes(self.target("", ""))  # the served model


def registrations(runtime: ServiceRuntime) -> tuple[list[Registration], ActivationsServicer]:
    """The servicers of this service, for ``run_service``."""
    servicer = ActivationsServicer(runtime)
    full_name = activations_pb2.DESCRIPTOR.services_by_name["Activations"].full_name
    return [Registration(servicer, activations_pb2_grpc.add_ActivationsServicer_to_server, full_name)], servicer
