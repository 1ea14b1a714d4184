"""Writers racing on one key never leave an object whose digest does not match its bytes.

Two writers put different bytes (and metadata naming the writer) under the same key at the
same moment, many times over; afterwards the stored digest must match the stored bytes, and
the metadata must belong to the same put as the bytes. Both put modes are raced: a plain put
(last writer wins) and a put ``if_absent`` (the content-key put: first writer wins, and both
writers get the ref of the one object that stands).
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from cdissect_common.config import load_settings
from cdissect_common.store import ObjectStore, open_store, sha256_hex

FS_RACES = 300
S3_RACES = 30


def race(store: ObjectStore, key: str, if_absent: bool) -> list:
    """Two threads put different bytes under ``key`` at once; returns their refs."""
    barrier = threading.Barrier(2)
    refs: list = [None, None]
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        data = f"writer {i} of {key} ".encode() * (200 + 50 * i)
        try:
            barrier.wait()
            refs[i] = store.put(key, data, {"writer": str(i)}, if_absent=if_absent)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return refs


def check_consistent(store: ObjectStore, key: str) -> str:
    """Digest, bytes and metadata under ``key`` belong to one put; returns the winning writer."""
    info = store.stat(key)
    data = store.get(key)
    assert info.sha256 == sha256_hex(data), f"{key}: stored digest does not match the stored bytes"
    writer = info.metadata["writer"]
    assert data.startswith(f"writer {writer} of {key} ".encode()), f"{key}: metadata of one put, bytes of another"
    return writer


def run_races(store: ObjectStore, n: int, if_absent: bool) -> None:
    for i in range(n):
        key = f"race/{'absent' if if_absent else 'replace'}/{i}.bin"
        refs = race(store, key, if_absent)
        check_consistent(store, key)
        stored = store.stat(key).sha256
        if if_absent:
            assert refs[0].sha256 == refs[1].sha256 == stored, f"race {i}: a writer got a ref to bytes not stored"
        else:
            assert stored in {refs[0].sha256, refs[1].sha256}
            store.get(key, sha256=stored)


@pytest.fixture
def fs_store(tmp_path) -> ObjectStore:
    return open_store(f"file://{tmp_path}/store")


@pytest.mark.parametrize("if_absent", [False, True], ids=["replace", "if_absent"])
def test_filesystem_races_leave_digest_and_bytes_together(fs_store: ObjectStore, if_absent: bool) -> None:
    run_races(fs_store, FS_RACES, if_absent)
    leftovers = [p for p in (fs_store.root / ".tmp").iterdir()]
    assert leftovers == []
    # every object folder is referenced by exactly one key: nothing leaked by the losers
    assert len(list((fs_store.root / ".objects").glob("*/*"))) == FS_RACES


@pytest.mark.slow
@pytest.mark.parametrize("if_absent", [False, True], ids=["replace", "if_absent"])
def test_s3_races_leave_digest_and_bytes_together(seaweedfs, if_absent: bool) -> None:
    settings = load_settings(env=seaweedfs.env(), config_file=None)
    store = open_store(f"s3://{seaweedfs.bucket}/races-{int(if_absent)}", settings)
    run_races(store, S3_RACES, if_absent)
