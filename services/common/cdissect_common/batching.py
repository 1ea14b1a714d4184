"""Server-side batching of concurrent small calls: many callers, one forward pass.

Other projects call the embedder's inline RPCs with a few items each, from many threads or
processes at once. One forward pass per call wastes the device (a batch of 32 costs little more
than a batch of 1 on a GPU, and less per image on a CPU). ``MicroBatcher`` collects the items of
concurrent calls that share a key (the model, the prompt templates) into one call of
``run_batch``, then hands every caller back exactly its own results:

- a dispatcher thread takes the oldest waiting call, then every other waiting call with the
  same key, up to ``max_items`` items; if that is fewer than ``max_items`` it waits at most
  ``max_wait_s`` after the oldest call arrived for more (a lone caller pays at most that);
  while a batch runs, new calls queue up and form the next batch at once;
- calls with another key wait for a later batch, in arrival order;
- errors stay with their call: callers validate their own input before submitting, and if a
  batch fails anyway, each of its calls is run alone, so only the call that fails gets the
  error and its batch-mates get their results.

torch-free; the embedder supplies ``run_batch`` (stack, forward under the device lock, split).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Call(Generic[T, R]):
    key: Hashable
    items: Sequence[T]
    arrived: float
    future: "Future[list[R]]" = field(default_factory=Future)


class MicroBatcher(Generic[T, R]):
    """Batches the items of concurrent ``submit`` calls with equal keys into ``run_batch`` calls.

    ``run_batch(key, items)`` must return one result per item, in order. Calls with at least
    ``max_items`` items are run on their own at once (still one at a time with the others).
    """

    def __init__(self, run_batch: Callable[[Hashable, list[T]], Sequence[R]], max_items: int,
                 max_wait_s: float, name: str = "batcher") -> None:
        if max_items < 1 or max_wait_s < 0:
            raise ValueError(f"max_items must be >= 1 and max_wait_s >= 0, got {max_items} and {max_wait_s}")
        self.run_batch = run_batch
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self.name = name
        self._waiting: list[_Call[T, R]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # how many run_batch calls succeeded (for metrics and tests)

    def submit(self, key: Hashable, items: Sequence[T]) -> list[R]:
        """Run ``items`` in a batch with other callers' items of the same key; their results in order."""
        if not items:
            return []
        call: _Call[T, R] = _Call(key, list(items), time.monotonic())
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            self._waiting.append(call)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return call.future.result()

    def close(self) -> None:
        """Stop the dispatcher after the calls already waiting have run."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    # ------------------------------------------------------------------ dispatcher
    def _take(self) -> list[_Call[T, R]] | None:
        """The next batch: the oldest call and the same-key calls after it (None once closed and idle)."""
        with self._cond:
            while not self._waiting:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._waiting[0]
            deadline = first.arrived + self.max_wait_s
            while True:
                batch, size = [], 0
                for call in self._waiting:
                    if call.key == first.key and (not batch or size + len(call.items) <= self.max_items):
                        batch.append(call)
                        size += len(call.items)
                        if size >= self.max_items:
                            break
                remaining = deadline - time.monotonic()
                if size >= self.max_items or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            taken = {id(c) for c in batch}
            self._waiting = [c for c in self._waiting if id(c) not in taken]
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: list[_Call[T, R]]) -> None:
        items = [item for call in batch for item in call.items]
        try:
            results = list(self.run_batch(batch[0].key, items))
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: run_batch returned {len(results)} results for {len(items)} items")
        except BaseException as exc:  # noqa: BLE001 - reported to the callers
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for call in batch:  # find the culprit: each call alone, so one bad call fails alone
                self._run([call])
            return
        self.batches += 1
        start = 0
        for call in batch:
            call.future.set_result(results[start:start + len(call.items)])
            start += len(call.items)


__all__ = ["MicroBatcher"]
