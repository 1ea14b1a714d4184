"""Bad input to a real service process is INVALID_ARGUMENT with the message the CLI gives for it.

- similarity parameters: the labeler checks them with cdissect_common.vocabulary, the rule the
  CLI's job spec uses, so `top_k=0` is refused with the same words everywhere (it used to fail deep
  in numpy as INTERNAL), before any artifact is read;
- a weights file that is not a checkpoint: the activations service names it and what it expected
  (it used to answer INTERNAL with torch.load's bare KeyError/IndexError).
"""
from __future__ import annotations

import grpc
import pytest

from cdissect.v1 import activations_pb2, common_pb2, labeler_pb2
from cdissect_common.checkpoint_format import EXPECTED
from cdissect_common.store import open_store
from cdissect_common.userfiles import upload_user_file
from cdissect_common.vocabulary import check_similarity_params
from tests.integration.conftest import TIMEOUT, ServiceHandle, launch_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labeler(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("labeler")
    handle = launch_service("labeler", {"CDISSECT_STORE": f"file://{tmp}/store"}, tmp / "logs")
    yield handle
    handle.kill()


def _ref(name: str, rows: int, cols: int) -> common_pb2.ArtifactRef:
    """A ref that names no stored object: the request must be refused before anything is read."""
    return common_pb2.ArtifactRef(key=f"nowhere/{name}", sha256="0" * 64, shape=[rows, cols])


@pytest.mark.parametrize("function, params", [
    ("soft_wpmi", {"top_k": 0}), ("soft_wpmi", {"top_k": -5}), ("wpmi", {"top_k": 2.5}),
    ("rank_reorder", {"top_fraction": 2}), ("cos_similarity_cubed", {"min_norm": 0})])
def test_the_labeler_refuses_bad_similarity_parameters_with_the_clis_message(
        labeler: ServiceHandle, function: str, params: dict) -> None:
    with pytest.raises(ValueError) as expected:
        check_similarity_params(function, params)
    stub = labeler.stub()
    similarity = common_pb2.SimilarityParams(function=function, params=params)
    shards = dict(image_embeddings=[_ref("img", 40, 8)], activations=[_ref("act", 40, 3)],
                  text_embeddings=_ref("text", 5, 8), similarity=similarity)
    calls = {
        "LabelLayer": lambda: stub.LabelLayer(labeler_pb2.LabelLayerRequest(layer="layer1", **shards),
                                              timeout=TIMEOUT),
        "EvaluateLabels": lambda: stub.EvaluateLabels(labeler_pb2.EvaluateLabelsRequest(
            layer="layer1", label_ids=[0, 1, 2], **shards), timeout=TIMEOUT),
    }
    for method, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, info.value.details())
        assert info.value.details() == str(expected.value), method


def test_a_weights_file_that_is_not_a_checkpoint_is_invalid_argument_naming_it(start_service, tmp_path) -> None:
    """It used to fail inside torch.load as INTERNAL: IndexError/KeyError. Both ways a checkpoint
    reaches the service are checked: uploaded through the store, and a server path in a model folder."""
    notes = tmp_path / "models" / "notes.pth"
    notes.parent.mkdir()
    notes.write_text("these are my notes, not weights\n")
    store_url = f"file://{tmp_path}/store"
    handle = start_service("activations", {"CDISSECT_STORE": store_url, "CDISSECT_MODEL_DIRS": str(notes.parent)})
    uploaded = activations_pb2.UserFile(name=notes.name, ref=upload_user_file(open_store(store_url), notes))
    stub = handle.stub()
    for request in (activations_pb2.ComputeShardActivationsRequest(model=f"resnet18:{notes}", layers=["layer4"],
                                                                   model_files=[uploaded]),
                    activations_pb2.ComputeShardActivationsRequest(model="resnet18", weights=str(notes),
                                                                   layers=["layer4"])):
        with pytest.raises(grpc.RpcError) as info:
            stub.CheckActivations(request, timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert "notes.pth is not a checkpoint" in info.value.details() and EXPECTED in info.value.details()
        assert "starts with text: 'these are my notes" in info.value.details()
