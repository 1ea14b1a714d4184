"""Load each model once per process, even when many RPCs ask for it at the same moment.

Keys are whatever identifies a loaded model (name, weights, device, precision). The first
caller of a key loads it while later callers of the same key wait; callers of other keys
are not blocked. A failed load is not cached, so a fixed configuration can be retried.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

M = TypeVar("M")


class ModelCache(Generic[M]):
    """A thread-safe, load-once map from key to loaded model."""

    def __init__(self, on_load: Callable[[Hashable, M], None] | None = None) -> None:
        self._models: dict[Hashable, M] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self._on_load = on_load

    def get(self, key: Hashable, load: Callable[[], M]) -> M:
        """The model under ``key``, calling ``load()`` exactly once across threads to make it."""
        with self._guard:
            if key in self._models:
                return self._models[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._models:
                    return self._models[key]
            model = load()
            with self._guard:
                self._models[key] = model
            if self._on_load is not None:
                self._on_load(key, model)
            return model

    def keys(self) -> list[Hashable]:
        """Keys of the loaded models."""
        with self._guard:
            return list(self._models)

    def __len__(self) -> int:
        with self._guard:
            return len(self._models)
