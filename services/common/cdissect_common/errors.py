"""gRPC status codes for errors, in one place.

Servicers raise ``ServiceError(code, message)`` (or let a known library error propagate);
the server's interceptor turns it into the status the caller sees. Known errors of the
common runtime map to specific codes here, so every service answers the same way: a missing
dataset is NOT_FOUND, a corrupt shard DATA_LOSS, an unreachable store UNAVAILABLE (with the
trailing metadata ``cdissect-cause: store-unavailable``: the service has already retried the
store for its whole budget, so callers report the store instead of retrying the service).
"""
from __future__ import annotations

import grpc

from .artifacts import ArtifactError
from .config import ConfigError
from .manifest import DatasetError, DatasetNotFoundError, ShardCorruptError
from .retry import CAUSE_METADATA_KEY, CAUSE_STORE_UNAVAILABLE, is_retryable_store
from .store import DigestMismatchError, ObjectNotFoundError, StoreConfigError, StoreUnavailableError
from .userfiles import ModelFileMissingError, ServerPathError, UserFileError


class ServiceError(Exception):
    """An error with the gRPC status it should produce."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> ServiceError:
    """The request itself is wrong (unknown model or layer, empty list, bad image)."""
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServiceError:
    """A referenced object (artifact, dataset) does not exist."""
    return ServiceError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServiceError:
    """The request is valid but the system is not in a state to serve it (inputs disagree)."""
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message)


def require_shard_ref(shard) -> None:
    """A shard RPC needs the shard's object key and digest, as a registered manifest gives them."""
    if not shard.ref.key or not shard.ref.sha256:
        raise invalid_argument("the request's shard has no ref.key/ref.sha256; pass a shard from a registered "
                               "dataset manifest")


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a caller should get for ``exc``."""
    if isinstance(exc, ServiceError):
        return exc.code, exc.message
    if isinstance(exc, (ObjectNotFoundError, DatasetNotFoundError, ModelFileMissingError)):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, (DigestMismatchError, ShardCorruptError, ArtifactError)):
        return grpc.StatusCode.DATA_LOSS, str(exc)
    if isinstance(exc, (DatasetError, ConfigError, UserFileError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, ServerPathError):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc)
    if isinstance(exc, StoreConfigError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, StoreUnavailableError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if is_retryable_store(exc):
        return grpc.StatusCode.UNAVAILABLE, f"object store unreachable, retry later: {exc}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def trailing_metadata_for(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that tells a cdissect client more than the status code (see the module docstring)."""
    if isinstance(exc, StoreUnavailableError):
        return ((CAUSE_METADATA_KEY, CAUSE_STORE_UNAVAILABLE),)
    return ()
