"""The labeler's selections and EvaluateLabels as real services on loopback (filesystem store).

- LabelLayer with --select simulation stores held-out scores, keyed apart from the reference's;
- EvaluateLabels on the run's own labels gives exactly the scores the labels artifact holds, and
  scores a text outside the concept set after EmbedConcepts embeds it;
- bad input is refused before any shard is read: eval fraction outside (0, 0.5], a held-out split
  under 20 images, a candidate count below 1, label ids that do not fit the layer.
"""
from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from cdissect.v1 import activations_pb2, common_pb2, embedder_pb2, labeler_pb2
from cdissect_common import artifacts
from cdissect_common.store import open_store
from cdissect_labeler.labels import LayerLabels
from tests.integration.conftest import TIMEOUT, ServiceHandle, register_probe

pytestmark = pytest.mark.slow
N_IMAGES = 160
# Not the pipeline tests' list: their first run must compute its text embeddings, not reuse these.
CONCEPTS = ["red", "green", "blue", "yellow", "circle", "square", "bright background"]


@pytest.fixture(scope="module")
def run(fs_services: dict[str, ServiceHandle], fs_store_url: str, tiny_clip_checkpoint: Path) -> dict:
    """Embeddings and layer1 activations of a 160-image probe set, and the stubs."""
    stubs = {name: handle.stub() for name, handle in fs_services.items()}
    store = open_store(fs_store_url)
    manifest = register_probe(store, "evaluation-probe", n=N_IMAGES, shard_size=64)
    clip = str(tiny_clip_checkpoint)
    images = [stubs["embedder"].EmbedImageShard(embedder_pb2.EmbedImageShardRequest(model=clip, shard=s),
                                                timeout=TIMEOUT).embeddings for s in manifest.shards]
    acts = [stubs["activations"].ComputeShardActivations(activations_pb2.ComputeShardActivationsRequest(
        model="resnet18", weights="none", layers=["layer1"], shard=s), timeout=TIMEOUT).activations[0]
        for s in manifest.shards]
    text = stubs["embedder"].EmbedConcepts(embedder_pb2.EmbedConceptsRequest(model=clip, concepts=CONCEPTS),
                                           timeout=TIMEOUT).embeddings
    return {"stubs": stubs, "store": store, "images": images, "acts": acts, "text": text, "clip": clip}


def _label(run: dict, **fields) -> labeler_pb2.LabelLayerResponse:
    return run["stubs"]["labeler"].LabelLayer(labeler_pb2.LabelLayerRequest(
        layer="layer1", image_embeddings=run["images"], activations=run["acts"], text_embeddings=run["text"],
        similarity=common_pb2.SimilarityParams(function="soft_wpmi", params={"top_k": 10}), top_concepts=3,
        top_images=4, **fields), timeout=TIMEOUT)


def _evaluate(run: dict, text: common_pb2.ArtifactRef, label_ids: list[int], **fields):
    return run["stubs"]["labeler"].EvaluateLabels(labeler_pb2.EvaluateLabelsRequest(
        layer="layer1", image_embeddings=run["images"], activations=run["acts"], text_embeddings=text,
        label_ids=label_ids, similarity=common_pb2.SimilarityParams(function="soft_wpmi", params={"top_k": 10}),
        **fields), timeout=TIMEOUT)


def test_both_selections_store_heldout_scores_and_evaluate_labels_reproduces_them(run: dict) -> None:
    reference = _label(run)
    simulation = _label(run, selection=labeler_pb2.LabelSelection(mode="simulation", candidates=4))
    assert reference.labels.key != simulation.labels.key
    # candidates and rank_penalty mean nothing to the reference selection: its labels are reused
    same = _label(run, selection=labeler_pb2.LabelSelection(mode="similarity", candidates=9, rank_penalty=0.3))
    assert same.reused and same.labels.key == reference.labels.key
    assert reference.heldout_images == simulation.heldout_images >= 20
    for response in (reference, simulation):
        labels = LayerLabels.from_arrays(artifacts.get_arrays(run["store"], response.labels))
        assert np.isfinite(labels.correlation).all() and np.isfinite(labels.auprc).all()
        scored = _evaluate(run, run["text"], labels.concept_ids[:, 0].tolist())
        assert scored.heldout_images == response.heldout_images
        np.testing.assert_allclose([u.correlation for u in scored.units], labels.correlation, atol=1e-6)
        np.testing.assert_allclose([u.auprc for u in scored.units], labels.auprc, atol=1e-6)
        assert [u.dead for u in scored.units] == labels.dead.tolist()
        assert [u.correlation for u in response.units] == pytest.approx(labels.correlation.tolist())
    sim_labels = LayerLabels.from_arrays(artifacts.get_arrays(run["store"], simulation.labels))
    assert sim_labels.similarity_rank.min() >= 1 and sim_labels.similarity_rank[:, 0].max() <= 4
    again = _label(run, selection=labeler_pb2.LabelSelection(mode="simulation", candidates=4))
    assert again.reused and again.heldout_images == simulation.heldout_images


def test_evaluate_labels_scores_texts_outside_the_concept_set(run: dict) -> None:
    texts = ["a red thing", "green or blue"]
    text = run["stubs"]["embedder"].EmbedConcepts(embedder_pb2.EmbedConceptsRequest(
        model=run["clip"], concepts=texts), timeout=TIMEOUT).embeddings
    K = 64
    ids = [k % 2 if k < 10 else -1 for k in range(K)]
    scored = _evaluate(run, text, ids)
    assert len(scored.units) == K and scored.positives >= 1
    assert [u.labelled for u in scored.units] == [k < 10 for k in range(K)]
    for u in scored.units[:10]:
        assert -1 <= u.correlation_low <= u.correlation <= u.correlation_high <= 1
        assert 0 <= u.auprc <= 1 and 0 < u.auprc_base <= scored.positives / scored.heldout_images + 1e-6
        assert 0 <= u.auc <= 1 and 0 <= u.p_value <= 1


@pytest.mark.parametrize("fields, code, words", [
    ({"evaluation": labeler_pb2.HeldOutEvaluation(fraction=0.6)}, grpc.StatusCode.INVALID_ARGUMENT,
     r"eval fraction must be in (0, 0.5]"),
    ({"evaluation": labeler_pb2.HeldOutEvaluation(fraction=0.05)}, grpc.StatusCode.INVALID_ARGUMENT,
     "at least 20"),
    ({"selection": labeler_pb2.LabelSelection(mode="simulation", candidates=0)}, grpc.StatusCode.INVALID_ARGUMENT,
     "at least 1 candidate"),
    ({"selection": labeler_pb2.LabelSelection(mode="best")}, grpc.StatusCode.INVALID_ARGUMENT, "similarity, simulation"),
])
def test_bad_selection_and_evaluation_settings_are_refused(run: dict, fields: dict, code, words: str) -> None:
    if "evaluation" in fields and fields["evaluation"].fraction == pytest.approx(0.05):
        fields = {**fields, "selection": labeler_pb2.LabelSelection(mode="simulation")}
    with pytest.raises(grpc.RpcError) as info:
        _label(run, **fields)
    assert info.value.code() == code and words in info.value.details()


def test_evaluate_labels_refuses_what_does_not_fit(run: dict) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _evaluate(run, run["text"], [0] * 64, evaluation=labeler_pb2.HeldOutEvaluation(fraction=0.05))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at least 20" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        _evaluate(run, run["text"], [0] * 10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "one label id per unit" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        _evaluate(run, run["text"], [len(CONCEPTS)] * 64)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "label_ids" in info.value.details()
