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
from typing import TypeVar

import grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_GRPC_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
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

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Successive waits between attempts: base * multiplier**i, capped, with +-jitter."""
        rng = rng or random.Random()
        base = self.initial_backoff
        for _ in range(max(self.max_attempts - 1, 0)):
            spread = base * self.jitter
            yield max(0.0, base + rng.uniform(-spread, spread))
            base = min(base * self.multiplier, self.max_backoff)

    def call(self, fn: Callable[[], T], retryable: Callable[[BaseException], bool],
             describe: str = "call", sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> T:
        """Run ``fn`` until it succeeds, a non-retryable error occurs, or the budget runs out.

        The time budget counts from the first attempt on ``clock``, the attempts included: no wait
        is started that would end past ``max_total_seconds``. The last error is re-raised
        unchanged, so callers still see its type and gRPC code.
        """
        start = clock()
        delays = self.delays()
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised if not retryable
                if not retryable(exc):
                    raise
                delay = next(delays, None)
                elapsed = clock() - start
                if delay is None or elapsed + delay > self.max_total_seconds:
                    log.warning("%s failed after %d attempts in %.1fs: %s", describe, attempt, elapsed, exc)
                    raise
                log.info("%s failed (attempt %d: %s); retrying in %.2fs", describe, attempt,
                         _short(exc), delay)
                sleep(delay)
                attempt += 1


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def is_retryable_grpc(exc: BaseException) -> bool:
    """True for gRPC errors a retry can fix: UNAVAILABLE and DEADLINE_EXCEEDED."""
    return isinstance(exc, grpc.RpcError) and hasattr(exc, "code") and exc.code() in RETRYABLE_GRPC_CODES


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
