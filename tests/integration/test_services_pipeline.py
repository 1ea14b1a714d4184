"""The three services as real processes on loopback with the filesystem store: one run through
the RPCs, idempotency, discovery, health and reflection, metrics, and the error codes."""
from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from cdissect.v1 import activations_pb2, common_pb2, embedder_pb2, labeler_pb2
from cdissect_common import artifacts
from cdissect_common.store import open_store
from cdissect_labeler.labels import LayerLabels
from tests.integration.conftest import (CONCEPTS, PipelineResult, ServiceHandle, run_pipeline,
                                        shard_with_bad_image)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(fs_store_url: str):
    return open_store(fs_store_url)


@pytest.fixture(scope="module")
def stubs(fs_services: dict[str, ServiceHandle]) -> dict:
    return {name: handle.stub() for name, handle in fs_services.items()}


@pytest.fixture(scope="module")
def clip_path(tiny_clip_checkpoint: Path) -> str:
    return str(tiny_clip_checkpoint)


@pytest.fixture(scope="module")
def first_run(stubs: dict, store, clip_path: str) -> PipelineResult:
    return run_pipeline(stubs, store, clip_path)


def _code(exc_info: pytest.ExceptionInfo) -> grpc.StatusCode:
    return exc_info.value.code()


def test_first_run_computes_everything(first_run: PipelineResult, store) -> None:
    assert first_run.reused == {"image": 0, "text": 0, "activations": 0, "labels": 0}
    assert first_run.manifest.num_images == 20 and len(first_run.manifest.shards) == 2
    for ref in first_run.image_refs:
        emb = artifacts.get_arrays(store, ref)["embeddings"]
        assert emb.shape == (10, 32) == tuple(ref.shape) and ref.dtype == "float32"
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
        assert ref.producer["service"] == "embedder" and ref.producer["model_id"].startswith("openai-clip:file:")
    assert list(first_run.text_ref.shape) == [len(CONCEPTS), 32]
    assert [list(r.shape) for r in first_run.act_refs["layer1"]] == [[10, 64], [10, 64]]
    assert [list(r.shape) for r in first_run.act_refs["fc"]] == [[10, 1000], [10, 1000]]
    assert first_run.act_refs["layer1"][0].key != first_run.act_refs["layer1"][1].key


def test_labels_artifact_matches_inline_summary(first_run: PipelineResult, store) -> None:
    resp = first_run.labels
    labels = LayerLabels.from_arrays(artifacts.get_arrays(store, resp.labels))
    assert labels.num_units == 64 == len(resp.units)
    assert labels.concept_ids.shape == (64, 3) and labels.top_images.shape == (64, 4)
    unit = resp.units[5]
    assert list(unit.concept_ids) == labels.concept_ids[5].tolist()
    assert list(unit.top_images) == labels.top_images[5].tolist()
    assert all(0 <= i < len(CONCEPTS) for u in resp.units for i in u.concept_ids)
    assert all(0 <= i < 20 for u in resp.units for i in u.top_images)


def test_second_run_reuses_every_artifact(first_run: PipelineResult, stubs: dict, store, clip_path: str) -> None:
    again = run_pipeline(stubs, store, clip_path, dataset="probe-again")
    assert again.reused == {"image": 2, "text": 1, "activations": 4, "labels": 1}
    assert [r.key for r in again.image_refs] == [r.key for r in first_run.image_refs]
    assert again.labels.labels == first_run.labels.labels
    assert again.labels.units == first_run.labels.units


def test_discovery(stubs: dict, clip_path: str) -> None:
    layers = stubs["activations"].ListLayers(activations_pb2.ListLayersRequest(model="resnet18", weights="none"),
                                             timeout=60).layers
    by_name = {layer.name: layer for layer in layers}
    assert by_name["layer4"].kind == "Sequential" and list(by_name["layer4"].output_shape) == [512, 7, 7]
    assert list(by_name["fc"].output_shape) == [1000]
    models = stubs["activations"].ListModels(common_pb2.ListModelsRequest(), timeout=60)
    assert "resnet50" in models.models
    clip_models = stubs["embedder"].ListModels(common_pb2.ListModelsRequest(), timeout=60)
    assert "ViT-B/16" in clip_models.models


def test_inline_embeddings(stubs: dict, clip_path: str) -> None:
    from tests.conftest import make_probe_images

    texts = stubs["embedder"].EmbedTexts(embedder_pb2.EmbedTextsRequest(model=clip_path, texts=["red", "blue"],
                                                                       normalize=True), timeout=60)
    vecs = np.array([v.values for v in texts.vectors])
    assert vecs.shape == (2, 32) and texts.dtype == "float32" and texts.device == "cpu"
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    pngs = [d for _, d, _ in make_probe_images(3)]
    images = stubs["embedder"].EmbedImages(embedder_pb2.EmbedImagesRequest(model=clip_path, images=pngs), timeout=60)
    assert len(images.vectors) == 3 and len(images.vectors[0].values) == 32
    with pytest.raises(grpc.RpcError) as info:
        stubs["embedder"].EmbedImages(embedder_pb2.EmbedImagesRequest(model=clip_path, images=[pngs[0], b"xx"]),
                                      timeout=60)
    assert _code(info) == grpc.StatusCode.INVALID_ARGUMENT and "images[1]" in info.value.details()


def test_health_and_reflection(fs_services: dict[str, ServiceHandle]) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    for name, handle in fs_services.items():
        assert handle.health_status() == "SERVING" and handle.health_status("") == "SERVING"
        stub = reflection_pb2_grpc.ServerReflectionStub(handle.channel())
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=10)
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert f"cdissect.v1.{name.capitalize()}" in names and "grpc.health.v1.Health" in names


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_unauthenticated_calls_rejected(fs_services: dict[str, ServiceHandle], token: str | None) -> None:
    stub = fs_services["embedder"].stub(token=token)
    with pytest.raises(grpc.RpcError) as info:
        stub.ListModels(common_pb2.ListModelsRequest(), timeout=10)
    assert _code(info) == grpc.StatusCode.UNAUTHENTICATED
    assert "CDISSECT_AUTH_TOKEN" in info.value.details()


def test_oversized_request_rejected(stubs: dict, clip_path: str) -> None:
    big = "x" * (5 * 1024 * 1024)  # the services run with CDISSECT_MAX_MESSAGE_BYTES = 4 MiB
    with pytest.raises(grpc.RpcError) as info:
        stubs["embedder"].EmbedTexts(embedder_pb2.EmbedTextsRequest(model=clip_path, texts=[big]), timeout=30)
    assert _code(info) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bad_model_layer_and_concepts(first_run: PipelineResult, stubs: dict, clip_path: str) -> None:
    shard = first_run.manifest.shards[0]
    act = stubs["activations"]
    cases = [
        (lambda: act.ComputeShardActivations(activations_pb2.ComputeShardActivationsRequest(
            model="resnet18", weights="none", layers=["layer9"], shard=shard), timeout=60), "layer9"),
        (lambda: act.ComputeShardActivations(activations_pb2.ComputeShardActivationsRequest(
            model="resnet1800", weights="none", layers=["fc"], shard=shard), timeout=60), "resnet1800"),
        (lambda: act.ComputeShardActivations(activations_pb2.ComputeShardActivationsRequest(
            model="resnet18", weights="none", layers=["fc"], pooling="median", shard=shard), timeout=60), "median"),
        (lambda: act.ComputeShardActivations(activations_pb2.ComputeShardActivationsRequest(
            model="resnet18", weights="none", layers=["layer1[0].relu"], shard=shard), timeout=60),
         "'layer1[0].relu' runs 2 times in one forward pass"),
        (lambda: stubs["embedder"].EmbedConcepts(embedder_pb2.EmbedConceptsRequest(model=clip_path, concepts=[]),
                                                 timeout=60), "empty concept list"),
        (lambda: stubs["embedder"].EmbedConcepts(embedder_pb2.EmbedConceptsRequest(
            model=clip_path, concepts=["red", "  "]), timeout=60), "blank"),
        (lambda: stubs["embedder"].EmbedImageShard(embedder_pb2.EmbedImageShardRequest(
            model="ViT-B/99", shard=shard), timeout=60), "ViT-B/99"),
    ]
    for call, needle in cases:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert _code(info) == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert needle in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        act.ComputeShardActivations(activations_pb2.ComputeShardActivationsRequest(
            model="resnet18", weights="none", layers=["layer9"], shard=shard), timeout=60)
    assert "layer4" in info.value.details()  # the close names


def test_unreadable_image_in_a_shard_is_refused_whatever_the_policy(stubs: dict, store, clip_path: str) -> None:
    """Registration decides skipping; a service never drops a row of a registered shard (that
    would shift every later image), it names the image and says to register again."""
    shard = shard_with_bad_image(store)
    for policy in ("error", "skip"):
        calls = [
            lambda: stubs["embedder"].EmbedImageShard(embedder_pb2.EmbedImageShardRequest(
                model=clip_path, shard=shard, on_bad_image=policy), timeout=60),
            lambda: stubs["activations"].ComputeShardActivations(activations_pb2.ComputeShardActivationsRequest(
                model="resnet18", weights="none", layers=["fc"], shard=shard, on_bad_image=policy), timeout=60),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert _code(info) == grpc.StatusCode.INVALID_ARGUMENT
            assert "'truncated.jpg' in shard 0" in info.value.details()
            assert "register the probe set again" in info.value.details()


def test_labeler_input_errors(first_run: PipelineResult, stubs: dict) -> None:
    missing = common_pb2.ArtifactRef(key="embeddings/image/" + "0" * 64 + ".safetensors", sha256="1" * 64)
    base = dict(layer="layer1", text_embeddings=first_run.text_ref,
                similarity=common_pb2.SimilarityParams(params={"top_k": 5}))
    with pytest.raises(grpc.RpcError) as info:
        stubs["labeler"].LabelLayer(labeler_pb2.LabelLayerRequest(
            image_embeddings=[missing], activations=first_run.act_refs["layer1"][:1], **base), timeout=60)
    assert _code(info) == grpc.StatusCode.NOT_FOUND and missing.key in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stubs["labeler"].LabelLayer(labeler_pb2.LabelLayerRequest(
            image_embeddings=first_run.image_refs, activations=first_run.act_refs["layer1"][:1], **base), timeout=60)
    assert _code(info) == grpc.StatusCode.INVALID_ARGUMENT and "same order" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stubs["labeler"].LabelLayer(labeler_pb2.LabelLayerRequest(
            image_embeddings=first_run.image_refs, activations=first_run.act_refs["layer1"], layer="layer1",
            text_embeddings=first_run.text_ref, similarity=common_pb2.SimilarityParams(function="wpmix")), timeout=60)
    assert _code(info) == grpc.StatusCode.INVALID_ARGUMENT and "soft_wpmi" in info.value.details()


def test_metrics_have_the_contract_series(first_run: PipelineResult, fs_services: dict[str, ServiceHandle],
                                          stubs: dict) -> None:
    with pytest.raises(grpc.RpcError):
        stubs["embedder"].EmbedConcepts(embedder_pb2.EmbedConceptsRequest(concepts=[]), timeout=30)
    text = {name: handle.metrics_text() for name, handle in fs_services.items()}
    emb = text["embedder"]
    assert 'cdissect_stage_duration_seconds_bucket{le="1800.0",service="embedder",stage="encode_images"}' in emb
    assert 'cdissect_shards_total{outcome="computed",service="embedder"}' in emb
    assert 'cdissect_rpc_errors_total{code="INVALID_ARGUMENT",method="EmbedConcepts",service="embedder"}' in emb
    assert 'cdissect_model_loaded{service="embedder"} 1.0' in emb
    assert 'cdissect_artifact_bytes_total{direction="write",service="embedder"}' in emb
    for name in ("activations", "labeler"):
        assert f'cdissect_images_total{{service="{name}"}}' in text[name]
        assert 'stage="rpc_' in text[name]
    images_line = [l for l in text["activations"].splitlines() if l.startswith("cdissect_images_total{")][0]
    assert float(images_line.split()[-1]) >= 20
