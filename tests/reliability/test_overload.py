"""Overload: shard calls from many runs at once must not starve the health checks that keep a pod
alive. The labeler's work calls hang on a store read (a FIFO in a real filesystem store), so
they hold their threads for as long as the test wants, at no CPU cost."""
from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from cdissect.v1 import common_pb2, labeler_pb2
from cdissect_common.retry import grpc_cause
from tests.integration.conftest import launch_service
from tests.integration.test_cli_support import wait_for
from tests.reliability.hung_store import hang_object, readers_blocked, release

pytestmark = pytest.mark.slow
ZERO = "0" * 64
WORKERS, CAP, CALLS = 64, 4, 12  # the defaults of max_workers and max_inflight_rpcs


def test_health_answers_at_once_while_shard_calls_saturate_the_service(tmp_path: Path) -> None:
    root = tmp_path / "store"
    handle = launch_service("labeler", {"CDISSECT_STORE": f"file://{root}"}, tmp_path / "logs")
    text_key = f"embeddings/text/{ZERO}.safetensors"
    fifo = hang_object(root, text_key)
    try:
        def ref(key: str) -> common_pb2.ArtifactRef:
            return common_pb2.ArtifactRef(key=key, sha256=ZERO, shape=[4, 8])

        request = labeler_pb2.LabelLayerRequest(
            layer="layer1", image_embeddings=[ref("embeddings/image/a.safetensors")],
            activations=[ref("activations/a.safetensors")], text_embeddings=ref(text_key))
        stub = handle.stub(token=None)
        calls = [stub.LabelLayer.future(request, timeout=120) for _ in range(CALLS)]
        wait_for(lambda: readers_blocked(handle.proc.pid) >= CAP, 60, f"{CAP} calls blocked on the store")
        refused = wait_for(lambda: [c for c in calls if c.done()] if sum(c.done() for c in calls) == CALLS - CAP
                           else None, 30, "the calls over the cap to be answered")

        started = time.monotonic()
        assert handle.health_status() == "SERVING"  # a 2 s deadline inside; before: DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.0
        assert readers_blocked(handle.proc.pid) == CAP < WORKERS
        for call in refused:
            error = call.exception()
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and grpc_cause(error) == "busy"
            assert "busy" in error.details() and "max_inflight_rpcs" in error.details()
        assert f'cdissect_rpc_errors_total{{code="RESOURCE_EXHAUSTED",method="LabelLayer",service="labeler"}} ' \
               f'{float(CALLS - CAP)}' in handle.metrics_text()
    finally:
        release(fifo)
        handle.kill()
