"""cdissect_common.clients: endpoint parsing, gRPC targets (name resolution left to gRPC), replica counts."""
from __future__ import annotations

import socket

import pytest

from cdissect_common.clients import (EndpointError, default_endpoint, grpc_target, make_channel, make_stub,
                                     replica_count, split_endpoint)
from cdissect_common.config import load_settings


def test_split_endpoint_forms() -> None:
    assert split_endpoint("embedder:50051") == ("embedder", 50051)
    assert split_endpoint("dns:///svc.ns:7") == ("svc.ns", 7)
    assert split_endpoint("dns://10.0.0.10:53/svc.ns:7") == ("svc.ns", 7)
    assert split_endpoint("[::1]:9") == ("::1", 9)
    with pytest.raises(EndpointError, match="must be host:port"):
        split_endpoint("embedder")


def test_targets_leave_resolution_to_grpc() -> None:
    assert grpc_target("embedder:50051") == "dns:///embedder:50051"
    assert grpc_target("[::1]:9") == "dns:///[::1]:9"
    assert grpc_target("dns://10.0.0.10:53/embedder:50051") == "dns://10.0.0.10:53/embedder:50051"
    assert grpc_target("unix:/run/embedder.sock") == "unix:/run/embedder.sock"
    with pytest.raises(EndpointError, match="must be host:port"):
        grpc_target("embedder")


def test_replica_counts_size_the_concurrency() -> None:
    assert replica_count("10.0.0.5:50051") == 1 and replica_count("[::1]:50051") == 1
    assert replica_count("localhost:1") == 1
    assert replica_count(f"{socket.gethostname()}:5") >= 1
    assert replica_count("dns://127.0.0.1:53/anything.test:5") == 1


def test_a_name_that_does_not_resolve_now_counts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizing must not turn a DNS failure into bad input (exit 2): the channel resolves the name
    itself and its UNAVAILABLE is retried, so a transient failure only delays the run."""
    assert replica_count("no-such-host.invalid:1") == 1

    def dns_down(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", dns_down)
    assert replica_count("labeler.cdissect.svc:50053") == 1


def test_channel_and_stub() -> None:
    settings = load_settings(env={"CDISSECT_AUTH_TOKEN": "t"}, config_file=None)
    channel = make_channel("127.0.0.1:1", settings)
    stub = make_stub("embedder", channel)
    assert hasattr(stub, "EmbedImageShard")
    channel.close()
    assert default_endpoint("labeler") == "localhost:50053"
    with pytest.raises(ValueError, match="unknown service"):
        make_stub("nope", channel)
