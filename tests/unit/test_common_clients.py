"""cdissect_common.clients: endpoint parsing and DNS expansion into replica addresses."""
from __future__ import annotations

import socket

import pytest

from cdissect_common.clients import (EndpointError, default_endpoint, expand_endpoint, expand_endpoints,
                                     make_channel, make_stub, split_endpoint)
from cdissect_common.config import load_settings


def test_split_endpoint_forms() -> None:
    assert split_endpoint("embedder:50051") == ("embedder", 50051)
    assert split_endpoint("dns:///svc.ns:7") == ("svc.ns", 7)
    assert split_endpoint("[::1]:9") == ("::1", 9)
    with pytest.raises(EndpointError, match="must be host:port"):
        split_endpoint("embedder")


def test_expand_literals_and_names() -> None:
    assert expand_endpoint("10.0.0.5:50051") == ["10.0.0.5:50051"]
    assert expand_endpoint("[::1]:50051") == ["[::1]:50051"]
    assert expand_endpoint("localhost:1") == ["localhost:1"]
    resolved = expand_endpoint(f"{socket.gethostname()}:5")
    assert resolved and all(a.endswith(":5") for a in resolved)
    pairs = expand_endpoints(["127.0.0.1:1", "127.0.0.1:1", "127.0.0.2:1"])
    assert pairs == [("127.0.0.1:1", "127.0.0.1:1"), ("127.0.0.2:1", "127.0.0.2:1")]
    with pytest.raises(EndpointError, match="cannot resolve"):
        expand_endpoint("no-such-host.invalid:1")


def test_channel_and_stub() -> None:
    settings = load_settings(env={"CDISSECT_AUTH_TOKEN": "t"}, config_file=None)
    channel = make_channel("127.0.0.1:1", settings)
    stub = make_stub("embedder", channel)
    assert hasattr(stub, "EmbedImageShard")
    channel.close()
    assert default_endpoint("labeler") == "localhost:50053"
    with pytest.raises(ValueError, match="unknown service"):
        make_stub("nope", channel)
