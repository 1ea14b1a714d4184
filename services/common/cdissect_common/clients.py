"""Client side of the services: channels with auth/TLS/size limits, gRPC name resolution, stubs.

An endpoint is ``host:port`` (or any gRPC target URI: ``dns://DNS-SERVER/host:port``,
``ipv4:``, ``unix:``). A channel dials it as ``dns:///host:port`` with the ``round_robin``
load-balancing policy: gRPC resolves the name itself, again whenever a connection fails, and
spreads calls over every address the name has. So the replicas behind a Kubernetes headless
Service all get calls, and a restarted pod's new address is found without restarting the client.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Any

import grpc

from cdissect.v1 import activations_pb2_grpc, embedder_pb2_grpc, labeler_pb2_grpc

from .auth import BearerTokenClientInterceptor, channel_credentials
from .config import Settings, service_defaults

STUB_CLASSES: dict[str, Any] = {
    "embedder": embedder_pb2_grpc.EmbedderStub,
    "activations": activations_pb2_grpc.ActivationsStub,
    "labeler": labeler_pb2_grpc.LabelerStub,
}
# Schemes of gRPC target URIs that are passed through unchanged.
TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")
# How soon gRPC may resolve a name again after a connection failure (its default is 30 s).
RERESOLVE_MS = 1000


class EndpointError(ValueError):
    """An endpoint string cannot be used; the message shows the expected form."""


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``dns:[//server/]host:port`` → (host, port)."""
    text = endpoint.strip()
    if text.startswith("dns:"):
        text = text[len("dns:"):]
        if text.startswith("//"):
            text = text[2:].split("/", 1)[-1]  # drop the DNS server (the URI's authority)
    for scheme in ("grpc://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit():
        raise EndpointError(f"endpoint {endpoint!r} must be host:port (e.g. localhost:50051 or embedder:50051)")
    return host, int(port_text)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def grpc_target(endpoint: str) -> str:
    """The target a channel dials: ``dns:///host:port`` for a plain endpoint, URIs unchanged."""
    text = endpoint.strip()
    if text.startswith(TARGET_SCHEMES):
        if text.startswith("dns:"):
            split_endpoint(text)
        return text
    host, port = split_endpoint(text)
    return f"dns:///{_join(host, port)}"


def replica_count(endpoint: str) -> int:
    """How many addresses ``endpoint`` has now (at least 1), to size how many calls to send at once.

    Only for sizing: the channel resolves the name itself and follows later changes. A name that
    does not resolve now counts as 1: a DNS failure may be transient (a cluster DNS restarting, a
    headless Service before its first pod is ready), and the channel's calls then fail UNAVAILABLE
    naming the resolution error, which the one retry policy waits out for ``retry_timeout``.
    """
    text = endpoint.strip()
    if text.startswith(TARGET_SCHEMES) and not text.startswith("dns:///"):
        return 1  # a custom resolver or DNS server: let gRPC count
    host, port = split_endpoint(text)
    try:
        ipaddress.ip_address(host)
        return 1
    except ValueError:
        pass
    if host == "localhost":
        return 1
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return 1
    return max(1, len({info[4][0] for info in infos}))


def channel_options(settings: Settings) -> list[tuple[str, Any]]:
    """Message-size limits, keepalive, round-robin over every address, prompt re-resolution."""
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.dns_min_time_between_resolutions_ms", RERESOLVE_MS),
    ]


def make_channel(endpoint: str, settings: Settings) -> grpc.Channel:
    """A channel to ``endpoint`` (see the module docstring) with the bearer token (if configured),
    TLS (if configured) and limits."""
    target = grpc_target(endpoint)
    creds = channel_credentials(settings)
    if creds is not None:
        channel = grpc.secure_channel(target, creds, options=channel_options(settings))
    else:
        channel = grpc.insecure_channel(target, options=channel_options(settings))
    token = settings.token()
    if token:
        channel = grpc.intercept_channel(channel, BearerTokenClientInterceptor(token))
    return channel


def make_stub(service: str, channel: grpc.Channel) -> Any:
    """The generated stub of ``service`` (embedder | activations | labeler) on ``channel``."""
    service_defaults(service)
    return STUB_CLASSES[service](channel)


def default_endpoint(service: str, host: str = "localhost") -> str:
    """``host:<default port of service>``."""
    return _join(host, service_defaults(service).port)


def wait_until_serving(channel: grpc.Channel, health_name: str = "", timeout: float = 60.0) -> None:
    """Block until grpc.health.v1 reports SERVING for ``health_name``; TimeoutError otherwise."""
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=health_name), timeout=2.0).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        time.sleep(0.1)
    raise TimeoutError(f"service {health_name or '(server)'} not SERVING after {timeout:.0f}s (last: {last})")
