"""Thread-pool helpers with no cdissect dependency: the cores a process may use, and an ordered,
bounded map over a pool.

Kept apart from ``prefetch`` (which imports ``errors``, which imports ``manifest``) so that
``manifest``'s image validation and the services' prefetching share one implementation.
"""
from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(work: Callable[[T], R], items: Iterable[T], workers: int, ahead: int,
                initializer: Callable[[], None] | None = None, name: str = "prefetch") -> Iterator[R]:
    """``work(item)`` for every item on ``workers`` threads (named ``name``_N), yielded in item order.

    ``initializer`` runs once on each worker thread before its first item.
    At most ``ahead`` items are submitted and not yet yielded. An exception raised by
    ``work`` is re-raised when its item's turn comes (so the first failure in item order wins);
    one raised by ``items`` itself is raised at once. Then, or when the caller stops iterating,
    queued work is cancelled and the running tasks are waited for, so no worker outlives the
    iterator.
    """
    if workers < 1 or ahead < 1:
        raise ValueError(f"workers and ahead must be >= 1, got {workers} and {ahead}")
    source = iter(items)
    pending: collections.deque[Future] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=initializer)
    try:
        for item in source:
            pending.append(pool.submit(work, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["available_cores", "ordered_map"]
