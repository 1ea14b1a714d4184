"""Callers without a token cannot grow a service's /metrics by inventing method names."""
from __future__ import annotations

import grpc
import pytest

pytestmark = pytest.mark.slow


def test_tokenless_junk_calls_do_not_grow_metrics(fs_shared) -> None:
    labeler = fs_shared.handles["labeler"]

    def junk(start: int, count: int) -> None:
        with grpc.insecure_channel(labeler.endpoint) as channel:
            for i in range(start, start + count):
                call = channel.unary_unary(f"/made.up.Service{i}/Method{i}", request_serializer=lambda b: b,
                                           response_deserializer=lambda b: b)
                with pytest.raises(grpc.RpcError) as info:
                    call(b"", timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    junk(0, 20)
    before = labeler.metrics_text()
    junk(20, 2000)
    after = labeler.metrics_text()
    assert "Service1" not in after and 'method="unknown"' in after
    assert len(after) - len(before) < 200, f"/metrics grew from {len(before)} to {len(after)} bytes"
