"""cdissect_common.images: one decoding and bad-image policy for every service, batch by batch."""
from __future__ import annotations

import grpc
import pytest

from cdissect_common.errors import ServiceError
from cdissect_common.images import decode_images, prepared_batches
from tests.conftest import make_probe_images


def _items(n: int) -> list[tuple[str, bytes]]:
    return [(name, data) for name, data, _ in make_probe_images(n)]


def test_batches_keep_order_and_size() -> None:
    items = _items(7)
    batches = list(prepared_batches(items, 3, lambda img: img.size))
    assert [len(b) for b, _ in batches] == [3, 3, 1]
    assert all(s == (32, 32) for b, _ in batches for s in b)
    names = []
    list(prepared_batches(items, 2, lambda img: names.append(img) or len(names)))
    assert len(names) == 7


def test_skip_counts_per_batch_and_error_names_image() -> None:
    items = _items(4)
    items.insert(2, ("broken.png", b"nope"))
    batches = list(prepared_batches(items, 2, lambda img: img.mode, on_bad_image="skip"))
    assert [b for b, _ in batches] == [["RGB", "RGB"], ["RGB"], ["RGB"]]
    assert [s for _, s in batches] == [[], ["broken.png"], []]
    with pytest.raises(ServiceError) as info:
        list(prepared_batches(items, 2, lambda img: img, where="shard 3"))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'broken.png' in shard 3" in info.value.message and "on_bad_image=skip" in info.value.message


def test_bad_policy_and_empty() -> None:
    with pytest.raises(ServiceError, match="on_bad_image must be"):
        decode_images(_items(1), "ignore")
    assert list(prepared_batches([], 4, lambda img: img)) == []
