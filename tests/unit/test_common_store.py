"""cdissect_common.store (filesystem backend) and artifacts: atomic puts, digests, keys, codec."""
from __future__ import annotations

import json
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
    assert sorted(p.relative_to(store.root / ".meta").as_posix() for p in (store.root / ".meta").rglob("*.json")) \
        == ["old/final.bin.json"]                                    # no side file of the failed put
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
