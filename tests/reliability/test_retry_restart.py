"""The retry budget runs from the failure, not from the first attempt: a shard that computed for
longer than `--retry-timeout` before its replica went away is still retried elsewhere."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from cdissect_common.retry import RetryPolicy, is_retryable_grpc
from cdissect_common.store import open_store
from tests.integration.conftest import launch_service
from tests.reliability.shard_calls import (LAYER, activations_task, cli_connection, kill_mid_shard, long_shard,
                                          serving_and_warm)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class Clock:
    """Time that passes only when the code under test sleeps or an attempt runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _policy() -> RetryPolicy:
    return RetryPolicy(initial_backoff=1.0, max_backoff=4.0, jitter=0.0, max_total_seconds=30.0)


def test_a_long_attempt_that_fails_is_retried_with_the_whole_budget() -> None:
    """10 minutes of work, then the pod restarts (UNAVAILABLE): the budget starts now."""
    clock, attempts = Clock(), []

    def shard() -> str:
        attempts.append(clock.now)
        if len(attempts) == 1:
            clock.now += 600.0
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        return "done"

    assert _policy().call(shard, is_retryable_grpc, sleep=clock.sleep, clock=clock) == "done"
    assert attempts == [0.0, 601.0]


def test_every_restart_after_long_work_gets_a_new_budget() -> None:
    """A rolling restart may hit the same shard on several replicas in turn."""
    clock, attempts = Clock(), []

    def shard() -> str:
        attempts.append(clock.now)
        if len(attempts) <= 3:
            clock.now += 100.0
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        return "done"

    assert _policy().call(shard, is_retryable_grpc, sleep=clock.sleep, clock=clock) == "done"
    assert len(attempts) == 4


def test_an_outage_is_bounded_from_its_first_failure() -> None:
    """Quick failures in a row share one budget, counted from the first of them."""
    clock, attempts = Clock(), []

    def down() -> None:
        attempts.append(clock.now)
        if len(attempts) == 1:
            clock.now += 600.0  # the shard ran, then the service went away for good
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(grpc.RpcError):
        _policy().call(down, is_retryable_grpc, sleep=clock.sleep, clock=clock)
    assert 600.0 + 25.0 <= attempts[-1] <= 600.0 + 30.0
    assert clock.now - 600.0 <= 30.0


def test_a_call_that_times_out_is_tried_once_more_only() -> None:
    """A hang (DEADLINE_EXCEEDED after a long wait) is the outage itself: no new budget for it."""
    clock, attempts = Clock(), []

    def hangs() -> None:
        attempts.append(clock.now)
        clock.now += 300.0
        raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)

    with pytest.raises(grpc.RpcError):
        _policy().call(hangs, is_retryable_grpc, sleep=clock.sleep, clock=clock)
    assert len(attempts) == 2


@pytest.mark.slow
def test_a_long_shard_is_retried_on_the_other_replica_after_its_replica_is_killed(tmp_path: Path) -> None:
    """Two activations replicas; the shard runs on the first for longer than the 0.5 s retry budget,
    then that replica is SIGKILLed: the CLI's dispatcher retries it on the second, which computes it.
    (Before: the budget was spent before the failure, so the run failed.)"""
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    shard = long_shard(store, "retry-restart", images=96)
    env = {"CDISSECT_STORE": url, "CDISSECT_BATCH_SIZE": "4"}
    first, second = (launch_service("activations", env, tmp_path / "logs", wait=False) for _ in range(2))
    try:
        for handle in (first, second):
            serving_and_warm(handle)
        budget = 0.5
        with cli_connection(f"{first.endpoint},{second.endpoint}", retry_s=budget) as connection, \
                ThreadPoolExecutor(1) as pool:
            dispatcher = connection.dispatcher("activations")
            started = time.monotonic()
            call = pool.submit(dispatcher.call_one, activations_task(shard), 0, threading.Event())
            kill_mid_shard(first, started, ran_at_least=2 * budget)
            response = call.result(timeout=300)
        assert "ComputeShardActivations shard=0 done" in second.log()
        assert list(response.activations[0].shape) == [96, 512] and response.reused == 0
        assert store.exists(response.activations[0].key) and LAYER in response.activations[0].producer["layer"]
    finally:
        first.kill()
        second.kill()
