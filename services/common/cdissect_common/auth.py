"""Caller authentication: a bearer-token server interceptor, the client-side metadata, and TLS.

The token comes from ``CDISSECT_AUTH_TOKEN`` or the file named by ``CDISSECT_AUTH_TOKEN_FILE``
(a mounted Kubernetes Secret). ``grpc.health.v1`` is exempt so kubelet gRPC probes, which send
no credentials, keep working. With no token configured the interceptor is not installed.
"""
from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from .config import ENV_VARS, ConfigError, Settings

AUTH_HEADER = "authorization"
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def bearer_metadata(token: str) -> list[tuple[str, str]]:
    """Call metadata carrying ``token`` (empty list without a token)."""
    return [(AUTH_HEADER, f"Bearer {token}")] if token else []


def _deny(message: str) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(abort)


def _deny_stream(message: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(self, token: str, exempt_prefixes: tuple[str, ...] = EXEMPT_PREFIXES) -> None:
        if not token:
            raise ValueError("BearerTokenInterceptor needs a non-empty token")
        self._expected = f"Bearer {token}".encode()
        self._exempt = exempt_prefixes

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        """Pass exempt methods and correct tokens through; answer everything else UNAUTHENTICATED."""
        method = handler_call_details.method or ""
        if method.startswith(self._exempt):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get(AUTH_HEADER)
        if given is not None and hmac.compare_digest(str(given).encode(), self._expected):
            return continuation(handler_call_details)
        reason = ("missing 'authorization: Bearer <token>' metadata" if given is None
                  else "the bearer token is wrong")
        message = (f"unauthenticated call to {method}: {reason}; set {ENV_VARS['auth_token']} (or "
                   f"{ENV_VARS['auth_token_file']}) on the client to the service's token")
        handler = continuation(handler_call_details)
        return _deny_stream(message, handler) if handler is not None else _deny(message)


class BearerTokenClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the bearer token to every outgoing call (works on plaintext and TLS channels)."""

    def __init__(self, token: str) -> None:
        self._metadata = bearer_metadata(token)

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or []) + self._metadata
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                              request: Any) -> Any:
        """Unary calls with the token attached."""
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                               request: Any) -> Any:
        """Server-streaming calls (health Watch) with the token attached."""
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                               request_iterator: Any) -> Any:
        """Client-streaming calls with the token attached."""
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                                request_iterator: Any) -> Any:
        """Bidirectional calls (server reflection) with the token attached."""
        return continuation(self._with_token(client_call_details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method: str, timeout: float | None, metadata: Any, credentials: Any,
                 wait_for_ready: Any, compression: Any) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {setting} file {path} ({ENV_VARS[setting]}): {exc.strerror}") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials when ``tls_cert``/``tls_key`` are set (client certs required if ``tls_ca`` is)."""
    if not settings.tls_cert:
        return None
    pair = (_read(settings.tls_key, "tls_key"), _read(settings.tls_cert, "tls_cert"))
    ca = _read(settings.tls_ca, "tls_ca") if settings.tls_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS channel credentials when ``tls_ca`` (or a client cert) is set, else None (plaintext)."""
    if not (settings.tls_ca or settings.tls_cert):
        return None
    ca = _read(settings.tls_ca, "tls_ca") if settings.tls_ca else None
    key = _read(settings.tls_key, "tls_key") if settings.tls_key else None
    cert = _read(settings.tls_cert, "tls_cert") if settings.tls_cert else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
