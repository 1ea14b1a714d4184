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
run in parallel. Each image is prepared right after it is decoded, so a worker holds at most one
full-resolution image. Errors keep their meaning: an unreadable image raises the INVALID_ARGUMENT
of ``images.decode_or_refuse`` naming it (the first one in dataset order, since results are
taken in order; registration decides skipping, the services never skip). Any other failure in
a worker (a bug or resource error in preprocessing or ``collate``) is a crash: it raises
``PrefetchCrash`` (INTERNAL) naming the image and where it happened, the remaining work is
cancelled, and the caller writes nothing for the shard.

torch-free: the services pass their own ``collate`` (stacking, pinned memory, device copies).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from .errors import ServiceError
from .config import DEFAULTS
from .images import DEFAULT_FIX, decode_or_refuse
from .parallel import available_cores, ordered_map

T = TypeVar("T")
R = TypeVar("R")
B = TypeVar("B")


class PrefetchCrash(ServiceError):
    """A prefetch worker failed for a reason other than a bad image; the shard is abandoned."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.INTERNAL, message)


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


def prepare_image(item: tuple[str, bytes], prepare: Callable[[Any], R], where: str = "",
                  max_pixels: int = DEFAULTS["max_image_pixels"], fix: str = DEFAULT_FIX) -> R:
    """One (name, encoded bytes) item decoded (``images.decode_or_refuse``: an unreadable image
    raises its INVALID_ARGUMENT) and ``prepare``d: the work of one prefetch task. A failure of
    ``prepare`` is a crash (``PrefetchCrash``, naming the image)."""
    name, data = item
    image = decode_or_refuse(name, data, where, max_pixels, fix)
    try:
        return prepare(image)
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure is a crash of this shard
        raise PrefetchCrash(f"preparing image {name!r}{_of(where)} crashed in a prefetch worker "
                            f"({type(exc).__name__}: {exc}); nothing was written for it") from exc


@dataclass
class PreparedBatch(Generic[B]):
    """One batch: the collated prepared images and their names, in order."""

    data: B
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


def prefetched_batches(items: Sequence[tuple[str, bytes]], batch_size: int, prepare: Callable[[Any], R],
                       collate: Callable[[list[R]], B], *, where: str = "",
                       max_pixels: int = DEFAULTS["max_image_pixels"], fix: str = DEFAULT_FIX,
                       workers: int | None = None, depth: int = DEFAULTS["prefetch_depth"],
                       thread_init: Callable[[], None] | None = None) -> Iterator[PreparedBatch[B]]:
    """Decode and ``prepare`` every image of ``items`` (``prepare_image``, one image per task) on
    ``workers`` threads (default: the available cores), group them into batches of ``batch_size``
    images in input order and ``collate`` each batch on an assembler thread; yield
    ``PreparedBatch``es with at most ``depth`` of them waiting for the caller.

    Close the returned generator when done (``with contextlib.closing(...)``): an exception in
    the caller's loop then stops the workers at once, not whenever the generator is collected.
    The batches are those of a serial loop over ``items`` (the same images in the same order).
    ``thread_init`` runs once on every worker thread and on the assembler (the services limit
    torch's CPU threads there: ``devices.one_torch_thread``). See the module docstring for errors.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    workers = workers or available_cores()
    suffix = _of(where)

    def work(item: tuple[str, bytes]) -> tuple[str, Any]:
        return item[0], prepare_image(item, prepare, where, max_pixels, fix)

    def batches() -> Iterator[PreparedBatch[B]]:
        prepared = ordered_map(work, items, workers, ahead=max(workers, batch_size), initializer=thread_init)
        try:
            while True:
                names, values = [], []
                for _ in range(batch_size):
                    try:
                        name, value = next(prepared)
                    except StopIteration:
                        break
                    except ServiceError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - e.g. a worker thread that could not start
                        raise PrefetchCrash(f"a prefetch worker{suffix} crashed ({type(exc).__name__}: {exc}); "
                                            f"nothing was written for it") from exc
                    names.append(name)
                    values.append(value)
                if not names:
                    return
                try:
                    data = collate(values)
                except Exception as exc:  # noqa: BLE001 - a crash of this shard
                    raise PrefetchCrash(f"assembling the batch of {names[0]!r}..{names[-1]!r}{suffix} crashed "
                                        f"({type(exc).__name__}: {exc}); nothing was written for it") from exc
                yield PreparedBatch(data, names)
        finally:
            prepared.close()

    return in_background(batches(), depth, initializer=thread_init)


__all__ = ["PrefetchCrash", "PreparedBatch", "available_cores", "in_background", "ordered_map",
           "prefetched_batches", "prepare_image"]
