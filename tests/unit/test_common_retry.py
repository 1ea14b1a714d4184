"""cdissect_common.retry: backoff grows with jitter, retries only retryable errors, respects budgets."""
from __future__ import annotations

import random

import grpc
import pytest
import urllib3

from cdissect_common.retry import RetryPolicy, is_retryable_grpc, is_retryable_store


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def test_delays_grow_and_cap() -> None:
    p = RetryPolicy(max_attempts=8, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.0)
    assert list(p.delays()) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    jittered = list(RetryPolicy(max_attempts=50, jitter=0.5).delays(random.Random(1)))
    assert len(set(jittered)) > 40 and all(d >= 0 for d in jittered)


def test_retries_until_success() -> None:
    calls, slept = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("refused")
        return "ok"

    assert RetryPolicy().call(flaky, is_retryable_store, sleep=slept.append) == "ok"
    assert len(calls) == 3 and len(slept) == 2


def test_non_retryable_raises_at_once() -> None:
    calls = []

    def bad() -> None:
        calls.append(1)
        raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(grpc.RpcError):
        RetryPolicy().call(bad, is_retryable_grpc, sleep=lambda s: None)
    assert len(calls) == 1


def test_gives_up_after_attempts_with_last_error() -> None:
    calls = []

    def down() -> None:
        calls.append(1)
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(grpc.RpcError) as info:
        RetryPolicy(max_attempts=4).call(down, is_retryable_grpc, sleep=lambda s: None)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and len(calls) == 4


class FakeClock:
    """Time that passes only when the code under test sleeps or an attempt takes time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_time_budget_stops_retrying_before_it_is_exceeded() -> None:
    clock, calls = FakeClock(), []

    def down() -> None:
        calls.append(clock.now)
        clock.now += 3.0                                   # each attempt itself takes 3 s
        raise ConnectionError("refused")

    policy = RetryPolicy(max_attempts=1000, initial_backoff=1.0, max_backoff=4.0, jitter=0.0, max_total_seconds=30.0)
    with pytest.raises(ConnectionError):
        policy.call(down, is_retryable_store, sleep=clock.sleep, clock=clock)
    # attempts end at 3, 7, 12, 19, 26, 33 s; the waits 1, 2, 4, 4, 4 end at 4, 9, 16, 23, 30 s
    # (within the 30 s budget); after the 6th attempt the next wait would end at 37 s: give up.
    assert clock.slept == [1.0, 2.0, 4.0, 4.0, 4.0] and len(calls) == 6
    assert clock.now - 1000.0 == 33.0 and len(calls) < policy.max_attempts


def test_time_budget_lets_a_late_success_through() -> None:
    clock, calls = FakeClock(), []

    def recovers_after_20s() -> str:
        calls.append(1)
        if clock.now - 1000.0 < 20.0:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        return "ok"

    policy = RetryPolicy(max_attempts=1000, initial_backoff=1.0, max_backoff=4.0, jitter=0.0, max_total_seconds=30.0)
    assert policy.call(recovers_after_20s, is_retryable_grpc, sleep=clock.sleep, clock=clock) == "ok"
    assert sum(clock.slept) <= 30.0 and clock.now - 1000.0 >= 20.0


def test_classification() -> None:
    from minio.error import S3Error

    assert is_retryable_grpc(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert not is_retryable_grpc(FakeRpcError(grpc.StatusCode.NOT_FOUND))
    assert is_retryable_store(urllib3.exceptions.MaxRetryError(None, "/x"))
    slow = S3Error(None, "SlowDown", "busy", "r", "rid", "hid")
    missing = S3Error(None, "NoSuchKey", "missing", "r", "rid", "hid")
    assert is_retryable_store(slow) and not is_retryable_store(missing)
    assert not is_retryable_store(ValueError("x"))
