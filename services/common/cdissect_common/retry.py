"""The one retry policy of cdissect: exponential backoff with jitter, bounded by attempts and time.

Used for gRPC calls (UNAVAILABLE, DEADLINE_EXCEEDED) and for object-store calls (connection
errors, 5xx / throttling answers), so a service restart or a store outage of a few seconds
makes callers wait and then succeed instead of failing a long run.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import grpc

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_GRPC_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Trailing metadata by which a cdissect service says why it failed (see grpc_cause).
CAUSE_METADATA_KEY = "cdissect-cause"
CAUSE_BUSY = "busy"
CAUSE_STORE_UNAVAILABLE = "store-unavailable"
# S3 error codes that mean "try again later", not "your request is wrong".
RETRYABLE_S3_CODES = frozenset({"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout",
                                "RequestTimeTooSkewed", "OperationAborted", "ServerError"})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, stopping at ``max_attempts`` or ``max_total_seconds``."""

    max_attempts: int = 30
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_total_seconds: float = 90.0
    jitter: float = 0.5

    def delays(self, rng: random.Random | None = None, limit: bool = True) -> Iterator[float]:
        """Successive waits between attempts: base * multiplier**i, capped, with +-jitter
        (``max_attempts - 1`` of them, or without end when ``limit`` is False)."""
        rng = rng or random.Random()
        base = self.initial_backoff
        count = 0
        while not limit or count < max(self.max_attempts - 1, 0):
            count += 1
            spread = base * self.jitter
            yield max(0.0, base + rng.uniform(-spread, spread))
            base = min(base * self.multiplier, self.max_backoff)

    def call(self, fn: Callable[[], T], retryable: Callable[[BaseException], bool],
             describe: str = "call", sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic, busy: Callable[[BaseException], bool] | None = None,
             busy_seconds: float = 0.0) -> T:
        """Run ``fn`` until it succeeds, a non-retryable error occurs, or the budget runs out.

        The time budget ``max_total_seconds`` is measured from the failure, not from the first
        attempt: a shard that computed for ten minutes before its service restarted still gets
        the whole budget to reach the replacement. Failures in a row share one budget (their
        attempts included; no wait is started that would end past it). A failure that ends an
        attempt which ran longer than the budget starts a new one (the service had taken the
        call, so this is a new outage), unless it is a timeout (then the hang is the outage).

        Errors for which ``busy`` is true (a live service that is full) are waited on for up to
        ``busy_seconds`` from the first such answer, with the same backoff and no attempt limit.

        The last error is re-raised unchanged, so callers still see its type and gRPC code.
        """
        delays, busy_delays = self.delays(), self.delays(limit=False)
        outage_start: float | None = None
        busy_start: float | None = None
        attempt = 1
        while True:
            started = clock()
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised if not retryable
                now = clock()
                if busy is not None and busy(exc):
                    outage_start, delays = None, self.delays()  # it answered: no outage
                    busy_start = now if busy_start is None else busy_start
                    delay = next(busy_delays)
                    if now - busy_start + delay > busy_seconds:
                        log.warning("%s: the service stayed busy for %.1fs: %s", describe, now - busy_start,
                                    _short(exc))
                        raise
                    log.info("%s: service busy (%s); retrying in %.2fs", describe, _short(exc), delay)
                    sleep(delay)
                    continue
                if not retryable(exc):
                    raise
                busy_start = None
                if outage_start is None or (now - started > self.max_total_seconds and not is_timeout(exc)):
                    outage_start, delays = now, self.delays()
                delay = next(delays, None)
                elapsed = now - outage_start
                if delay is None or elapsed + delay > self.max_total_seconds:
                    log.warning("%s failed after %d attempts, %.1fs after the first failure: %s", describe, attempt,
                                elapsed, exc)
                    raise
                log.info("%s failed (attempt %d: %s); retrying in %.2fs", describe, attempt,
                         _short(exc), delay)
                sleep(delay)
                attempt += 1


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def grpc_cause(exc: BaseException) -> str:
    """The ``cdissect-cause`` a cdissect service put in an error's trailing metadata ("" if none):
    ``busy`` (too many calls in flight) or ``store-unavailable`` (the service already retried
    the object store for its whole budget)."""
    trailing = getattr(exc, "trailing_metadata", None)
    try:
        pairs = trailing() if callable(trailing) else ()
    except Exception:  # noqa: BLE001 - an error without a finished call has no metadata
        pairs = ()
    return next((str(value) for key, value in pairs or () if key == CAUSE_METADATA_KEY), "")


def is_retryable_grpc(exc: BaseException) -> bool:
    """True for gRPC errors a retry can fix: UNAVAILABLE and DEADLINE_EXCEEDED, except a service's
    report that the object store is down (it already retried the store for its budget)."""
    return (isinstance(exc, grpc.RpcError) and hasattr(exc, "code") and exc.code() in RETRYABLE_GRPC_CODES
            and grpc_cause(exc) != CAUSE_STORE_UNAVAILABLE)


def is_busy_grpc(exc: BaseException) -> bool:
    """True for a cdissect service's "busy" answer (RESOURCE_EXHAUSTED, cause ``busy``)."""
    return (isinstance(exc, grpc.RpcError) and hasattr(exc, "code")
            and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and grpc_cause(exc) == CAUSE_BUSY)


def is_timeout(exc: BaseException) -> bool:
    """True when the error is a call that ran out of time (gRPC DEADLINE_EXCEEDED, socket timeouts)."""
    import urllib3.exceptions

    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    return isinstance(exc, (TimeoutError, urllib3.exceptions.TimeoutError))


def is_retryable_store(exc: BaseException) -> bool:
    """True for object-store errors a retry can fix: connection failures, 5xx and throttling."""
    import urllib3.exceptions
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, (ConnectionError, TimeoutError, urllib3.exceptions.HTTPError)):
        return True
    if isinstance(exc, (ServerError, InvalidResponseError)):
        return True
    if isinstance(exc, S3Error):
        return exc.code in RETRYABLE_S3_CODES
    return False


DEFAULT_POLICY = RetryPolicy()


def policy_from_settings(settings: "Settings") -> RetryPolicy:
    """The retry policy of a process: the defaults, with the ``retry_timeout`` setting as the budget
    (the object store's, from ``store.open_store``, and the CLI's shard calls)."""
    return RetryPolicy(max_total_seconds=settings.retry_timeout)
