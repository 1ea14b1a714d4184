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


def test_other_keys_not_blocked_and_failures_retried() -> None:
    cache: ModelCache[str] = ModelCache()
    gate = threading.Event()
    slow = threading.Thread(target=lambda: cache.get("slow", lambda: gate.wait(5) and "s"))
    slow.start()
    assert cache.get("fast", lambda: "f") == "f"  # while "slow" is still loading
    gate.set()
    slow.join()
    with pytest.raises(RuntimeError):
        cache.get("broken", lambda: (_ for _ in ()).throw(RuntimeError("no weights")))
    assert cache.get("broken", lambda: "fixed") == "fixed"
    assert sorted(cache.keys()) == ["broken", "fast", "slow"]
