"""Client side of the services: channels with auth/TLS/size limits, replica discovery, stubs.

``expand_endpoint`` turns a DNS name that resolves to many addresses (a Kubernetes headless
Service, several replicas) into one endpoint per address, so a caller can open a channel to
each and spread shards across all replicas.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
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


class EndpointError(ValueError):
    """An endpoint string cannot be used; the message shows the expected form."""


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` → (host, port)."""
    text = endpoint.strip()
    for scheme in ("dns:///", "grpc://", "http://"):
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


def expand_endpoint(endpoint: str) -> list[str]:
    """All addresses a ``host:port`` resolves to, as ``ip:port`` (IP literals and localhost unchanged)."""
    host, port = split_endpoint(endpoint)
    try:
        ipaddress.ip_address(host)
        return [_join(host, port)]
    except ValueError:
        pass
    if host == "localhost":
        return [_join(host, port)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EndpointError(f"cannot resolve {host!r} of endpoint {endpoint!r}: {exc.strerror}; check the name "
                            f"or the cluster DNS") from None
    out: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = _join(str(sockaddr[0]), port)
        if address not in out:
            out.append(address)
    return out


def expand_endpoints(endpoints: Iterable[str]) -> list[tuple[str, str]]:
    """(address, original endpoint) for every address of every endpoint, without duplicates."""
    seen: list[tuple[str, str]] = []
    for endpoint in endpoints:
        for address in expand_endpoint(endpoint):
            if address not in [a for a, _ in seen]:
                seen.append((address, endpoint))
    return seen


def channel_options(settings: Settings, target_name: str | None = None) -> list[tuple[str, Any]]:
    """Message-size limits and keepalive; TLS name override when dialling an expanded IP."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 0),
    ]
    if target_name:
        options.append(("grpc.ssl_target_name_override", target_name))
    return options


def make_channel(endpoint: str, settings: Settings, original: str | None = None) -> grpc.Channel:
    """A channel to ``endpoint`` with the bearer token (if configured), TLS (if configured) and limits."""
    split_endpoint(endpoint)
    creds = channel_credentials(settings)
    if creds is not None:
        name = split_endpoint(original)[0] if original and original != endpoint else None
        channel = grpc.secure_channel(endpoint, creds, options=channel_options(settings, name))
    else:
        channel = grpc.insecure_channel(endpoint, options=channel_options(settings))
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
