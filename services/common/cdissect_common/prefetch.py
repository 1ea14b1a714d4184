"""Bounded, ordered prefetching on worker threads: prepare the next batches while one computes.

A shard's images are read, decoded and preprocessed by ``workers`` threads, one image per task,
while the caller runs the forward pass on the batch before. Results come back in the images'
order whatever order the workers finish in, so the output arrays are the same as a serial loop's.
Bounds: the workers hold at most one batch's worth of images in flight, and at most ``depth``
assembled batches wait for the caller, so at most ``depth + 3`` batches of prepared images exist
at any time (queued, in flight, being assembled, being computed) whatever the shard's size.

The pipeline, for ``prefetched_batches``::

    items ──► worker threads (decode + prepare, one image each) ──► assembler thread
          (in order; groups batch_size images, calls ``collate``) ──► queue of ``depth`` ──► caller

Pillow decodes and resizes, and torch runs its tensor kernels, with the GIL released, so threads
run in parallel. Errors keep their meaning: a bad image under the 'error' policy raises the
same INVALID_ARGUMENT naming the image as the serial path (the first bad image in dataset
order, since results are taken in order); under 'skip' it is skipped and named. Any other
failure in a worker (a bug or resource error in decoding, preprocessing or ``collate``) is a
crash: it raises ``PrefetchCrash`` (INTERNAL) naming the image and where it happened, the
remaining work is cancelled, and the caller writes nothing for the shard.

torch-free: the services pass their own ``collate`` (stacking, pinned memory, device copies).
"""
from __future__ import annotations

import collections
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from .errors import ServiceError
from .images import check_bad_image_policy, decode_images

T = TypeVar("T")
R = TypeVar("R")
B = TypeVar("B")
DEFAULT_DEPTH = 2


class PrefetchCrash(ServiceError):
    """A prefetch worker failed for a reason other than a bad image; the shard is abandoned."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.INTERNAL, message)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(work: Callable[[T], R], items: Iterable[T], workers: int, ahead: int,
                initializer: Callable[[], None] | None = None) -> Iterator[R]:
    """``work(item)`` for every item on ``workers`` threads, yielded in item order.

    ``initializer`` runs once on each worker thread before its first item.
    At most ``ahead`` items are submitted and not yet yielded. An exception raised by
    ``work`` is re-raised when its item's turn comes (so the first failure in item order wins);
    then, or when the caller stops iterating, queued work is cancelled and the running tasks
    are waited for, so no worker outlives the iterator.
    """
    if workers < 1 or ahead < 1:
        raise ValueError(f"workers and ahead must be >= 1, got {workers} and {ahead}")
    source = iter(items)
    pending: collections.deque[Future] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch", initializer=initializer)
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


_DONE = object()


def in_background(iterator: Iterator[T], depth: int, name: str = "assembler",
                  initializer: Callable[[], None] | None = None) -> Iterator[T]:
    """Run ``iterator`` on its own thread, at most ``depth`` items ahead of the caller.

    ``initializer`` runs first on that thread.
    Its exceptions are re-raised in the caller at the point they occurred in the sequence.
    Closing the returned generator (or an exception in the caller's loop) stops the thread.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            if initializer is not None:
                initializer()
            for item in iterator:
                if not put((True, item)):
                    return
            put((True, _DONE))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            put((False, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = out.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _of(where: str) -> str:
    return f" of {where}" if where else ""


def prepare_image(item: tuple[str, bytes], prepare: Callable[[Any], R], on_bad_image: str = "error",
                  where: str = "") -> tuple[str, bool, R | None]:
    """(name, kept, prepared image) of one (name, encoded bytes) item, the work of one prefetch task.

    Decoded by ``images.decode_images``: an unreadable image raises its INVALID_ARGUMENT under
    'error' and comes back with kept=False under 'skip'. A failure of ``prepare`` is a crash
    (``PrefetchCrash``, naming the image).
    """
    name = item[0]
    images, _ = decode_images([item], on_bad_image, where)
    if not images:
        return name, False, None
    try:
        return name, True, prepare(images[0])
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure is a crash of this shard
        raise PrefetchCrash(f"preparing image {name!r}{_of(where)} crashed in a prefetch worker "
                            f"({type(exc).__name__}: {exc}); nothing was written for it") from exc


@dataclass
class PreparedBatch(Generic[B]):
    """One batch: the collated prepared images, the names kept and the names skipped (in order)."""

    data: B | None
    names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


def prefetched_batches(items: Sequence[tuple[str, bytes]], batch_size: int, prepare: Callable[[Any], R],
                       collate: Callable[[list[R]], B], *, on_bad_image: str = "error", where: str = "",
                       workers: int | None = None, depth: int = DEFAULT_DEPTH,
                       thread_init: Callable[[], None] | None = None) -> Iterator[PreparedBatch[B]]:
    """Decode (``images.decode_images``, one image per task) and ``prepare`` every image of ``items``
    on ``workers`` threads (default: the available cores), group them into batches of
    ``batch_size`` images in input order and ``collate`` each batch on an assembler thread;
    yield ``PreparedBatch``es with at most ``depth`` of them waiting for the caller.

    Close the returned generator when done (``with contextlib.closing(...)``): an exception in
    the caller's loop then stops the workers at once, not whenever the generator is collected.

    Batches are cut over the input items, as the serial path cuts them: a batch holds the kept
    images of ``batch_size`` consecutive items (fewer when some were skipped; ``data`` is None
    when all were). ``thread_init`` runs once on every worker thread and on the assembler (the
    services limit torch's CPU threads there: ``devices.one_torch_thread``). See the module
    docstring for errors.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    policy = check_bad_image_policy(on_bad_image)
    workers = workers or available_cores()
    suffix = _of(where)

    def work(item: tuple[str, bytes]) -> tuple[str, bool, Any]:
        return prepare_image(item, prepare, policy, where)

    def batches() -> Iterator[PreparedBatch[B]]:
        prepared = ordered_map(work, items, workers, ahead=max(workers, batch_size), initializer=thread_init)
        try:
            while True:
                names, skipped, values = [], [], []
                for _ in range(batch_size):
                    try:
                        name, kept, value = next(prepared)
                    except StopIteration:
                        break
                    except ServiceError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - e.g. a worker thread that could not start
                        raise PrefetchCrash(f"a prefetch worker{suffix} crashed ({type(exc).__name__}: {exc}); "
                                            f"nothing was written for it") from exc
                    if kept:
                        names.append(name)
                        values.append(value)
                    else:
                        skipped.append(name)
                if not names and not skipped:
                    return
                data = None
                if values:
                    try:
                        data = collate(values)
                    except Exception as exc:  # noqa: BLE001 - a crash of this shard
                        raise PrefetchCrash(f"assembling the batch of {names[0]!r}..{names[-1]!r}{suffix} crashed "
                                            f"({type(exc).__name__}: {exc}); nothing was written for it") from exc
                yield PreparedBatch(data, names, skipped)
        finally:
            prepared.close()

    return in_background(batches(), depth, initializer=thread_init)


__all__ = ["DEFAULT_DEPTH", "PrefetchCrash", "PreparedBatch", "available_cores", "in_background", "ordered_map",
           "prefetched_batches", "prepare_image"]
