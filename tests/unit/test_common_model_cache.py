"""cdissect_common.model_cache: one load per key across threads; failures are not cached."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cdissect_common.model_cache import ModelCache


def test_concurrent_callers_share_one_load() -> None:
    loads: list[str] = []
    loaded: list[object] = []
    cache: ModelCache[object] = ModelCache(on_load=lambda key, model: loaded.append(key))

    def load(name: str) -> object:
        loads.append(name)
        time.sleep(0.2)
        return object()

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: cache.get(("m", i % 2), lambda: load(f"m{i % 2}")), range(16)))
    assert sorted(loads) == ["m0", "m1"] and len(loaded) == 2 and len(cache) == 2
    assert len({id(g) for g in got}) == 2


def test_other_keys_are_not_blocked_while_one_loads() -> None:
    cache: ModelCache[str] = ModelCache()
    started, gate = threading.Event(), threading.Event()

    def slow_load() -> str:
        started.set()
        gate.wait(30)
        return "s"

    slow = threading.Thread(target=lambda: cache.get("slow", slow_load))
    slow.start()
    got: dict[str, str] = {}
    try:
        assert started.wait(10), "the slow load never started"
        fast = threading.Thread(target=lambda: got.setdefault("fast", cache.get("fast", lambda: "f")))
        fast.start()
        fast.join(10)
        # "fast" was loaded and returned while "slow" was still inside its load.
        assert got == {"fast": "f"} and not gate.is_set() and slow.is_alive()
    finally:
        gate.set()
        slow.join()
    assert sorted(cache.keys()) == ["fast", "slow"]


def test_failed_loads_are_not_cached() -> None:
    cache: ModelCache[str] = ModelCache()
    with pytest.raises(RuntimeError, match="no weights"):
        cache.get("broken", lambda: (_ for _ in ()).throw(RuntimeError("no weights")))
    assert cache.keys() == []
    assert cache.get("broken", lambda: "fixed") == "fixed"
    assert cache.keys() == ["broken"]
