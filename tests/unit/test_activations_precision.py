"""The activations service's precision option: bf16 autocast as a named option beside float32."""
from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from cdissect.v1 import activations_pb2
from cdissect_activations.service import ActivationsServicer
from cdissect_common import artifacts
from cdissect_common.config import load_settings
from cdissect_common.errors import ServiceError
from cdissect_common.manifest import ImageSource, register_dataset
from cdissect_common.server import ServiceRuntime
from tests.conftest import make_probe_images

pytestmark = pytest.mark.slow


def _servicer(tmp_path: Path, device: str = "cpu") -> ActivationsServicer:
    settings = load_settings("activations", env={"CDISSECT_STORE": f"file://{tmp_path}/store",
                                                 "CDISSECT_DEVICE": device, "CDISSECT_BATCH_SIZE": "4"},
                             config_file=None)
    return ActivationsServicer(ServiceRuntime("activations", settings))


def compute(servicer: ActivationsServicer, precision: str, n: int = 6) -> tuple[list, dict[str, np.ndarray]]:
    """ComputeShardActivations of resnet18 (random weights) on n generated images; (refs, arrays)."""
    images = [ImageSource(name=f, data=d) for f, d, _ in make_probe_images(n, size=48)]
    shard = register_dataset(servicer.runtime.store, "probe", images, shard_size=n).shards[0]
    response = servicer.ComputeShardActivations(activations_pb2.ComputeShardActivationsRequest(
        model="resnet18", weights="none", layers=["layer2", "fc"], shard=shard, precision=precision), None)
    arrays = {ref.producer["layer"]: artifacts.get_arrays(servicer.runtime.store, ref)[artifacts.ACTIVATIONS]
              for ref in response.activations}
    return list(response.activations), arrays


def test_bfloat16_is_close_to_float32_and_keyed_apart(tmp_path: Path) -> None:
    servicer = _servicer(tmp_path)
    refs32, acts32 = compute(servicer, "")
    refs16, acts16 = compute(servicer, "bfloat16")
    assert [r.key for r in refs32] != [r.key for r in refs16]  # never served in place of the float32 result
    assert refs16[0].producer["precision"] == "bfloat16" and refs32[0].producer["precision"] == "float32"
    same, _ = compute(servicer, "float32")  # "" and "float32" are the same request
    assert [r.key for r in same] == [r.key for r in refs32]
    for layer in ("layer2", "fc"):
        a32, a16 = acts32[layer], acts16[layer]
        assert a16.dtype == np.float32 and a16.shape == a32.shape
        assert not np.array_equal(a16, a32)  # it did run in bf16
        rel = np.linalg.norm(a16 - a32) / np.linalg.norm(a32)
        assert rel < 3e-2, (layer, rel)  # bf16 operands: ~1e-2


def test_unknown_precision_is_refused(tmp_path: Path) -> None:
    servicer = _servicer(tmp_path)
    with pytest.raises(ServiceError) as info:
        compute(servicer, "float16")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "precision must be one of float32, bfloat16" in info.value.message
