"""Load each model once per process, even when many RPCs ask for it at the same moment, and keep
at most a set number loaded.

Keys are whatever identifies a loaded model (name, weights, device, precision). The first
caller of a key loads it while later callers of the same key wait; callers of other keys
are not blocked. A failed load is not cached, so a fixed configuration can be retried.

With ``max_models`` (the ``max_loaded_models`` setting), the cache holds at most that many
models: loading one more drops the least recently used (an RPC still using a dropped model
keeps it until it returns; the memory is freed then). A service shared by many projects that
each bring their own checkpoint therefore cannot run out of memory by accumulating them.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

M = TypeVar("M")


class ModelCache(Generic[M]):
    """A thread-safe, load-once, least-recently-used map from key to loaded model."""

    def __init__(self, on_load: Callable[[Hashable, M], None] | None = None, max_models: int | None = None,
                 on_evict: Callable[[Hashable, M], None] | None = None) -> None:
        if max_models is not None and max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        self._models: OrderedDict[Hashable, M] = OrderedDict()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self._on_load = on_load
        self._on_evict = on_evict
        self.max_models = max_models

    def get(self, key: Hashable, load: Callable[[], M]) -> M:
        """The model under ``key``, calling ``load()`` exactly once across threads to make it."""
        with self._guard:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key]
            model = load()
            with self._guard:
                self._models[key] = model
                evicted = []
                while self.max_models is not None and len(self._models) > self.max_models:
                    evicted.append(self._models.popitem(last=False))
                self._locks.pop(key, None)
            if self._on_load is not None:
                self._on_load(key, model)
            for old_key, old_model in evicted:
                if self._on_evict is not None:
                    self._on_evict(old_key, old_model)
            return model

    def keys(self) -> list[Hashable]:
        """Keys of the loaded models, least recently used first."""
        with self._guard:
            return list(self._models)

    def __len__(self) -> int:
        with self._guard:
            return len(self._models)
