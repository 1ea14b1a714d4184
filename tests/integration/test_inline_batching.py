"""Inline calls from many clients at once, over gRPC to a real embedder process: batched on the
server (cdissect_common.batching), each client gets its own vectors, a bad call fails alone."""
from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from cdissect.v1 import embedder_pb2
from tests.integration.conftest import ServiceHandle

pytestmark = pytest.mark.slow
CLIENTS = 12


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (20 * i % 255, 200, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _encode_count(metrics: str) -> int:
    for line in metrics.splitlines():
        if line.startswith("cdissect_stage_duration_seconds_count{") and 'stage="encode_images"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def test_concurrent_inline_calls(start_service, tiny_clip_checkpoint: Path, tmp_path: Path) -> None:
    embedder: ServiceHandle = start_service("embedder", {"CDISSECT_STORE": f"file://{tmp_path}/store",
                                                         "CDISSECT_INLINE_BATCH_WAIT_SECONDS": "0.2",
                                                         "CDISSECT_MODEL_DIRS": str(tiny_clip_checkpoint.parent)})
    model = str(tiny_clip_checkpoint)
    stubs = [embedder.stub() for _ in range(CLIENTS)]  # one channel each, as separate clients
    requests = [embedder_pb2.EmbedImagesRequest(model=model, images=[_png(i)]) for i in range(CLIENTS)]
    requests[4] = embedder_pb2.EmbedImagesRequest(model=model, images=[_png(4), b"\x89PNG broken"])
    barrier = threading.Barrier(CLIENTS)

    def call(i: int):
        barrier.wait()
        try:
            return stubs[i].EmbedImages(requests[i], timeout=120)
        except grpc.RpcError as err:
            return err

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(call, range(CLIENTS)))
    forward_passes = _encode_count(embedder.metrics_text())
    assert 1 <= forward_passes < CLIENTS - 1  # batched: fewer forward passes than good calls
    bad = results[4]
    assert isinstance(bad, grpc.RpcError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'images[1]'" in bad.details()
    together = embedder.stub().EmbedImages(embedder_pb2.EmbedImagesRequest(
        model=model, images=[_png(i) for i in range(CLIENTS) if i != 4]), timeout=120)
    expected = np.array([v.values for v in together.vectors], dtype=np.float32)
    got = np.array([r.vectors[0].values for i, r in enumerate(results) if i != 4], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert all(len(r.vectors) == 1 for i, r in enumerate(results) if i != 4)
