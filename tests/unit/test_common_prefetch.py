"""cdissect_common.prefetch: ordered parallel preparation, bounded look-ahead, errors as the serial path."""
from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import time
from contextlib import closing

import grpc
import pytest

from cdissect_common.errors import ServiceError
from cdissect_common.images import SHARD_IMAGE_FIX, decode_or_refuse
from cdissect_common.prefetch import PrefetchCrash, in_background, ordered_map, prefetched_batches
from tests.conftest import make_probe_images


def _items(n: int) -> list[tuple[str, bytes]]:
    return [(name, data) for name, data, _ in make_probe_images(n)]


def _no_address(text: str) -> str:
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("prefetch", "assembler"))]


def test_ordered_map_keeps_order_and_bounds_lookahead() -> None:
    lock = threading.Lock()
    started, consumed, most_ahead = [0], [0], [0]

    def work(i: int) -> int:
        with lock:
            started[0] += 1
            most_ahead[0] = max(most_ahead[0], started[0] - consumed[0])
        time.sleep(random.random() * 0.003)  # workers finish out of order
        return i * i

    out = []
    for value in ordered_map(work, range(200), workers=4, ahead=6):
        out.append(value)
        with lock:
            consumed[0] += 1
    assert out == [i * i for i in range(200)]
    assert most_ahead[0] <= 6


def test_ordered_map_raises_the_first_failure_in_item_order() -> None:
    def work(i: int) -> int:
        if i == 7:
            time.sleep(0.05)  # finishes after item 9 has failed
            raise ValueError("seven")
        if i == 9:
            raise KeyError("nine")
        return i

    seen = []
    with pytest.raises(ValueError, match="seven"):
        for value in ordered_map(work, range(20), workers=4, ahead=8):
            seen.append(value)
    assert seen == list(range(7))
    assert not _prefetch_threads()


def test_stopping_early_stops_every_thread() -> None:
    batches = prefetched_batches(_items(40), 4, lambda img: img.size, list, workers=3)
    with closing(batches):
        first = next(batches)
    assert first.names == [f"img_{i:05d}.png" for i in range(4)]
    deadline = time.monotonic() + 5
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _prefetch_threads()


def test_in_background_bounds_the_queue_and_reraises_in_place() -> None:
    produced = []

    def gen():
        for i in range(10):
            produced.append(i)
            yield i
        raise RuntimeError("after ten")

    it = in_background(gen(), depth=2)
    assert next(it) == 0
    time.sleep(0.1)
    assert len(produced) <= 4  # one taken, two queued, one blocked on the full queue
    rest = []
    with pytest.raises(RuntimeError, match="after ten"):
        for value in it:
            rest.append(value)
    assert rest == list(range(1, 10))


def test_batches_equal_the_serial_path() -> None:
    items = _items(23)
    serial = [[decode_or_refuse(n, d).tobytes() for n, d in items[start:start + 4]] for start in range(0, 23, 4)]
    with closing(prefetched_batches(items, 4, lambda img: img.tobytes(), list, workers=3)) as batches:
        parallel = [(b.data, b.names) for b in batches]
    assert [data for data, _ in parallel] == serial
    assert [name for _, names in parallel for name in names] == [name for name, _ in items]


def test_an_unreadable_image_is_refused_naming_the_first_one_like_the_serial_path() -> None:
    items = _items(30)
    items[11] = ("late-broken.png", b"nope")
    items[3] = ("broken.png", b"nope")
    with pytest.raises(ServiceError) as serial:
        for name, data in items:
            decode_or_refuse(name, data, "shard 2", fix=SHARD_IMAGE_FIX)
    with pytest.raises(ServiceError) as info:
        with closing(prefetched_batches(items, 4, lambda img: img, list, where="shard 2", fix=SHARD_IMAGE_FIX,
                                        workers=4)) as batches:
            for _ in batches:
                pass
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert _no_address(info.value.message) == _no_address(serial.value.message)
    assert "'broken.png' in shard 2" in info.value.message and "register the probe set again" in info.value.message


def test_a_crashing_worker_fails_with_a_clear_message() -> None:
    def prepare(img):
        if prepare.calls.__next__() == 6:
            raise MemoryError("out of memory")
        return img.size

    prepare.calls = iter(range(10**6))
    lock = threading.Lock()

    def locked(img):
        with lock:
            return prepare(img)

    with pytest.raises(PrefetchCrash) as info:
        with closing(prefetched_batches(_items(20), 4, locked, list, where="shard 5", workers=2)) as batches:
            for _ in batches:
                pass
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "in a prefetch worker (MemoryError: out of memory)" in info.value.message
    assert "of shard 5" in info.value.message and "nothing was written" in info.value.message


def test_a_crashing_collate_fails_with_a_clear_message() -> None:
    def collate(values):
        raise TypeError("cannot stack")

    with pytest.raises(PrefetchCrash, match=r"assembling the batch of 'img_00000.png'..'img_00002.png' of shard 1 "
                                            r"crashed \(TypeError: cannot stack\)"):
        with closing(prefetched_batches(_items(6), 3, lambda img: img, collate, where="shard 1")) as batches:
            list(batches)


def test_importing_it_does_not_import_torch() -> None:
    code = "import sys, cdissect_common.prefetch, cdissect_common.batching; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
