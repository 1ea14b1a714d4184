"""cdissect_common.batching: concurrent calls share batches; results and errors stay with their call."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cdissect_common.batching import MicroBatcher


class Recorder:
    """run_batch that records every batch and fails on items named 'bad'."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[tuple[object, list[str]]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, key: object, items: list[str]) -> list[str]:
        with self.lock:
            self.batches.append((key, list(items)))
        time.sleep(self.delay)
        if "bad" in items:
            raise ValueError("item 'bad' cannot be embedded")
        return [f"{key}:{item}" for item in items]


def _concurrently(batcher: MicroBatcher, calls: list[tuple[object, list[str]]]) -> list[object]:
    """Submit every call from its own thread at once; each call's result or exception."""
    barrier = threading.Barrier(len(calls))

    def one(call: tuple[object, list[str]]) -> object:
        barrier.wait()
        try:
            return batcher.submit(*call)
        except Exception as exc:  # noqa: BLE001 - compared by the test
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def test_concurrent_calls_share_batches_and_get_their_own_results() -> None:
    run = Recorder(delay=0.02)
    batcher = MicroBatcher(run, max_items=8, max_wait_s=0.2)
    calls = [("m", [f"x{i}"]) for i in range(32)]
    results = _concurrently(batcher, calls)
    assert results == [[f"m:x{i}"] for i in range(32)]
    assert max(len(items) for _, items in run.batches) == 8
    assert len(run.batches) <= 6  # 32 items at most 8 per batch: ~4 batches, not 32
    batcher.close()


def test_keys_never_mix_and_large_calls_are_not_split() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_items=4, max_wait_s=0.1)
    calls = [("a", ["1", "2"]), ("b", ["3"]), ("a", ["4", "5", "6"]), ("b", ["7"]), ("a", ["8", "9", "10", "11", "12"])]
    results = _concurrently(batcher, calls)
    assert results == [[f"{k}:{i}" for i in items] for k, items in calls]
    for key, items in run.batches:
        owners = {k for k, call_items in calls for i in items if i in call_items}
        assert owners == {key}
        assert len(items) <= 4 or items == ["8", "9", "10", "11", "12"]
    batcher.close()


def test_one_bad_call_does_not_fail_its_batch_mates() -> None:
    run = Recorder(delay=0.01)
    batcher = MicroBatcher(run, max_items=16, max_wait_s=0.2)
    calls = [("m", [f"x{i}"]) for i in range(5)] + [("m", ["y", "bad"])] + [("m", [f"z{i}"]) for i in range(5)]
    results = _concurrently(batcher, calls)
    for call, result in zip(calls, results):
        if "bad" in call[1]:
            assert isinstance(result, ValueError) and "'bad'" in str(result)
        else:
            assert result == [f"m:{i}" for i in call[1]]
    assert any(len(items) > 2 for _, items in run.batches)  # they were batched together first
    batcher.close()


def test_a_lone_call_waits_at_most_max_wait() -> None:
    """A lone call waits max_wait for batch-mates, then runs: not at once (it would never batch),
    not until max_items fill. The upper bound leaves 0.5 s for thread wake-ups on a loaded machine."""
    batcher = MicroBatcher(Recorder(), max_items=64, max_wait_s=0.1)
    start = time.monotonic()
    assert batcher.submit("m", ["only"]) == ["m:only"]
    assert 0.1 <= time.monotonic() - start < 0.6
    assert batcher.submit("m", []) == []
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("m", ["late"])


def test_wrong_result_count_is_an_error_for_the_caller() -> None:
    batcher = MicroBatcher(lambda key, items: items[:-1], max_items=4, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        batcher.submit("m", ["a", "b"])
    batcher.close()


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_items must be >= 1"):
        MicroBatcher(Recorder(), max_items=0, max_wait_s=0.1)
