"""cdissect_common.model_cache: at most max_models loaded, the least recently used dropped first."""
from __future__ import annotations

import pytest

from cdissect_common.model_cache import ModelCache


def test_least_recently_used_model_is_dropped_first() -> None:
    loads, dropped = [], []
    cache: ModelCache[str] = ModelCache(max_models=2, on_evict=lambda key, model: dropped.append(key))

    def get(key: str) -> str:
        return cache.get(key, lambda: loads.append(key) or f"model {key}")

    get("a"), get("b"), get("a")          # a is now the most recently used
    get("c")                              # over the limit: b goes
    assert dropped == ["b"] and cache.keys() == ["a", "c"]
    get("b")                              # b loads again; a is now the oldest
    assert dropped == ["b", "a"] and loads == ["a", "b", "c", "b"] and len(cache) == 2


def test_unbounded_without_a_limit_and_a_bad_limit_refused() -> None:
    cache: ModelCache[int] = ModelCache()
    for i in range(50):
        cache.get(i, lambda i=i: i)
    assert len(cache) == 50
    with pytest.raises(ValueError, match="at least 1"):
        ModelCache(max_models=0)
