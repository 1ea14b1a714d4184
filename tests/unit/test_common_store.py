"""cdissect_common.store (filesystem backend) and artifacts: atomic puts, digests, keys, codec."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from cdissect_common import artifacts
from cdissect_common.store import (DigestMismatchError, FilesystemStore, ObjectNotFoundError, StoreConfigError,
                                   open_store, sha256_hex)


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    return open_store(f"file://{tmp_path}/store")


def test_put_get_stat_list_delete(store: FilesystemStore) -> None:
    ref = store.put("a/b/c.bin", b"hello", {"kind": "test"})
    assert ref.key == "a/b/c.bin" and ref.sha256 == sha256_hex(b"hello")
    assert store.get("a/b/c.bin", sha256=ref.sha256) == b"hello"
    info = store.stat("a/b/c.bin")
    assert (info.size, info.sha256, info.metadata["kind"]) == (5, ref.sha256, "test")
    store.put("a/x.bin", b"x")
    assert store.list("a/") == ["a/b/c.bin", "a/x.bin"] and store.list("a/b") == ["a/b/c.bin"]
    assert store.list("") == ["a/b/c.bin", "a/x.bin"]  # no .tmp / .meta entries
    store.delete("a/x.bin")
    store.delete("a/x.bin")
    assert not store.exists("a/x.bin") and store.exists("a/b/c.bin")


def test_missing_and_corrupt_objects(store: FilesystemStore) -> None:
    with pytest.raises(ObjectNotFoundError, match="no object 'nope'"):
        store.get("nope")
    ref = store.put("k", b"abc")
    (store.root / "k").write_bytes(b"abd")
    with pytest.raises(DigestMismatchError, match="delete it and recompute"):
        store.get("k", sha256=ref.sha256)


def test_failed_write_leaves_nothing(store: FilesystemStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import cdissect_common.store as mod

    real = mod.os.replace

    def crash(src: str, dst: object) -> None:
        if str(dst).endswith("final.bin"):
            raise OSError(28, "No space left on device")
        real(src, dst)

    store.put("old/final.bin", b"old", {"v": "1"})
    monkeypatch.setattr(mod.os, "replace", crash)
    with pytest.raises(OSError):
        store.put("final.bin", b"data" * 100, {"v": "2"})
    with pytest.raises(OSError):
        store.put("old/final.bin", b"new", {"v": "2"})
    assert not store.exists("final.bin")
    assert list((store.root / ".tmp").iterdir()) == []
    objects = sorted(p.parent for p in (store.root / store.OBJECTS).rglob("meta.json"))
    assert objects == [(store.root / "old/final.bin").resolve().parent]   # no object (data or metadata) of a failed put
    info = store.stat("old/final.bin")                               # the earlier object is intact
    assert (store.get("old/final.bin"), info.metadata["v"], info.sha256) == (b"old", "1", sha256_hex(b"old"))


@pytest.mark.parametrize("key", ["../evil", "/abs", "a//b", "a/../b", "sp ace"])
def test_bad_keys_rejected(store: FilesystemStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        store.put(key, b"x")


def test_open_store_errors() -> None:
    with pytest.raises(StoreConfigError, match="unsupported store URL"):
        open_store("ftp://x")
    from cdissect_common.config import load_settings

    with pytest.raises(StoreConfigError, match="needs an endpoint"):
        open_store("s3://bucket", load_settings(env={}, config_file=None))


def test_open_store_retries_s3_for_the_retry_timeout_setting() -> None:
    """open_store(settings=...) builds the one retry policy from retry_timeout (before: the 90 s
    default unless each caller built a policy by hand; the report's thumbnails did not)."""
    import time

    from cdissect_common.config import load_settings
    from cdissect_common.store import StoreUnavailableError

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    endpoint = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there: every call is refused
    settings = load_settings(env={"CDISSECT_S3_ENDPOINT": endpoint, "CDISSECT_RETRY_TIMEOUT": "0.5"}, config_file=None)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=r"did not answer for 0.5s \(CDISSECT_RETRY_TIMEOUT\)"):
        open_store("s3://bucket", settings)
    assert time.monotonic() - started < 30


def test_content_key_covers_fields_and_version(monkeypatch: pytest.MonkeyPatch) -> None:
    k1 = artifacts.content_key("activations", model_id="resnet18", layer="layer1", shard="ab")
    assert k1 == artifacts.content_key("activations", shard="ab", layer="layer1", model_id="resnet18")
    assert k1.startswith("activations/") and k1.endswith(".safetensors")
    assert k1 != artifacts.content_key("activations", model_id="resnet18", layer="layer2", shard="ab")
    monkeypatch.setitem(artifacts.CODE_VERSION, "activations", "999")
    assert k1 != artifacts.content_key("activations", model_id="resnet18", layer="layer1", shard="ab")
    with pytest.raises(ValueError, match="unknown artifact kind"):
        artifacts.content_key("embedings")


def test_arrays_roundtrip_with_ref(store: FilesystemStore) -> None:
    arrays = {"embeddings": np.arange(12, dtype=np.float32).reshape(3, 4)}
    ref = artifacts.put_arrays(store, "embeddings/image/x.safetensors", arrays, {"model_id": "m"})
    assert (ref.dtype, list(ref.shape), dict(ref.producer)) == ("float32", [3, 4], {"model_id": "m"})
    got = artifacts.get_arrays(store, ref)
    np.testing.assert_array_equal(got["embeddings"], arrays["embeddings"])
    again = artifacts.find_artifact(store, ref.key)
    assert again == ref
    assert artifacts.find_artifact(store, "embeddings/image/none.safetensors") is None
    _, meta = artifacts.read_artifact(store, ref.key)
    assert meta == {"model_id": "m"}


def test_multi_array_artifact_and_bad_bytes(store: FilesystemStore) -> None:
    arrays = {"concept_ids": np.zeros((2, 3), np.int64), "dead": np.array([True, False])}
    ref = artifacts.put_arrays(store, "labels/l.safetensors", arrays, primary="concept_ids")
    assert ref.dtype == "int64" and list(ref.shape) == [2, 3]
    got = artifacts.get_arrays(store, ref)
    assert got["dead"].dtype == np.bool_ and got["dead"].tolist() == [True, False]
    store.put("labels/bad.safetensors", b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(artifacts.ArtifactError, match="labels/bad.safetensors"):
        artifacts.get_arrays(store, "labels/bad.safetensors")
    data = artifacts.encode_arrays({"a": np.ones(2, np.float16)}, {"x": "1"})
    assert b"pickle" not in data and json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["a"]["dtype"] == "F16"


ENCODE_IN_SUBPROCESS = """
import sys, numpy as np
from cdissect_common.artifacts import encode_arrays
arrays = {"embeddings": np.arange(6, dtype=np.float32).reshape(2, 3), "dead": np.array([True, False])}
meta = {f"field-{i}": str(i) for i in range(12)}
sys.stdout.buffer.write(encode_arrays(arrays, meta))
"""


def test_encoding_gives_the_same_bytes_in_every_process() -> None:
    """Same arrays and metadata → same bytes (the library's metadata order varies per process)."""
    import subprocess
    import sys

    outputs = {subprocess.run([sys.executable, "-c", ENCODE_IN_SUBPROCESS], capture_output=True, check=True).stdout
               for _ in range(4)}
    assert len(outputs) == 1
    arrays, meta = artifacts.decode_arrays(outputs.pop())
    assert meta == {f"field-{i}": str(i) for i in range(12)} and arrays["dead"].tolist() == [True, False]


def test_put_if_absent_keeps_the_first_object(store: FilesystemStore) -> None:
    first = store.put("k/content.bin", b"first", {"writer": "a"}, if_absent=True)
    second = store.put("k/content.bin", b"second", {"writer": "b"}, if_absent=True)
    assert second == first and store.get("k/content.bin", sha256=first.sha256) == b"first"
    assert store.stat("k/content.bin").metadata["writer"] == "a"
    # a plain put replaces, data and metadata together, and leaves no old object folder behind
    third = store.put("k/content.bin", b"third", {"writer": "c"})
    assert store.get("k/content.bin", sha256=third.sha256) == b"third"
    assert store.stat("k/content.bin").metadata["writer"] == "c"
    assert len(list((store.root / ".objects").glob("*/*"))) == 1
    store.delete("k/content.bin")
    assert list((store.root / ".objects").glob("*/*")) == [] and not store.exists("k/content.bin")


def test_a_delete_racing_a_replacing_put_leaves_no_unreferenced_object(store: FilesystemStore,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The delete reads the key's link, then a replacing put links the key to its new object
    (removing the old one), then the delete unlinks the key: before, the put's new object folder
    was left behind with nothing pointing at it. Deletes and replacing puts now take turns."""
    import threading
    import time

    store.put("k/x.bin", b"old")
    read_link = threading.Event()
    resolve = FilesystemStore._object_folder

    def slow_in_delete(path: Path):
        folder = resolve(path)
        if threading.current_thread().name == "deleter":
            read_link.set()
            time.sleep(0.5)  # the window between reading the link and unlinking it
        return folder

    monkeypatch.setattr(FilesystemStore, "_object_folder", staticmethod(slow_in_delete))
    deleter = threading.Thread(target=store.delete, args=("k/x.bin",), name="deleter")
    deleter.start()
    assert read_link.wait(10)
    store.put("k/x.bin", b"new")
    deleter.join(10)
    folders = list((store.root / ".objects").glob("*/*"))
    linked = [FilesystemStore._object_folder(store.root / "k/x.bin")] if (store.root / "k/x.bin").is_symlink() else []
    assert folders == linked and store.get("k/x.bin") == b"new"


def test_put_if_absent_says_whether_it_wrote_after_one_stat(store: FilesystemStore,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A content-key put over an existing object costs one stat (before: exists() then ref(), two;
    on S3 two HEADs), and put_if_absent tells the caller whether its bytes were written."""
    first, written = store.put_if_absent("k/c.bin", b"first", {"writer": "a"})
    assert written and first.sha256 == sha256_hex(b"first")
    stats: list[str] = []
    stat = FilesystemStore.stat
    monkeypatch.setattr(FilesystemStore, "stat", lambda self, key: stats.append(key) or stat(self, key))
    again, written = store.put_if_absent("k/c.bin", b"second", {"writer": "b"})
    assert not written and again == first and stats == ["k/c.bin"]
    assert store.put("k/c.bin", b"third", if_absent=True) == first and len(stats) == 2
    assert store.get("k/c.bin") == b"first"


def test_put_arrays_of_an_existing_content_key_returns_the_stored_ref(store: FilesystemStore) -> None:
    key = "activations/same.safetensors"
    first = artifacts.put_arrays(store, key, {"activations": np.ones((2, 2), np.float32)}, {"device": "cpu"})
    again = artifacts.put_arrays(store, key, {"activations": np.ones((2, 2), np.float32)}, {"device": "cpu"})
    other = artifacts.put_arrays(store, key, {"activations": np.zeros((2, 2), np.float32)}, {"device": "cuda"})
    assert again == first and other == first
    np.testing.assert_array_equal(artifacts.get_arrays(store, other)["activations"], np.ones((2, 2)))


def test_objects_of_the_earlier_layout_still_read(store: FilesystemStore) -> None:
    """Plain files with .meta side files (stores written by earlier versions)."""
    (store.root / "old").mkdir()
    (store.root / "old" / "a.bin").write_bytes(b"legacy")
    (store.root / ".meta" / "old").mkdir(parents=True)
    (store.root / ".meta" / "old" / "a.bin.json").write_text(json.dumps({"sha256": sha256_hex(b"legacy"), "k": "v"}))
    (store.root / "old" / "b.bin").write_bytes(b"no side file")
    assert store.stat("old/a.bin").metadata["k"] == "v" and store.get("old/a.bin") == b"legacy"
    assert store.stat("old/b.bin").sha256 == sha256_hex(b"no side file")
    assert store.list("old/") == ["old/a.bin", "old/b.bin"]
    ref = store.put("old/a.bin", b"new")
    assert store.get("old/a.bin", sha256=ref.sha256) == b"new" and "k" not in store.stat("old/a.bin").metadata
    assert not (store.root / ".meta" / "old" / "a.bin.json").exists()
