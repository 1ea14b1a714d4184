"""cdissect_common.manifest: shards, digests, order, bad images, idempotent re-registration."""
from __future__ import annotations

from pathlib import Path

import pytest

from cdissect_common.manifest import (BadImageError, DatasetError, DatasetNotFoundError, ImageSource,
                                      ShardCorruptError, load_manifest, read_shard, register_dataset)
from cdissect_common.store import FilesystemStore, sha256_hex
from tests.conftest import make_probe_images, truncated_jpeg


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "store")


def _sources(n: int) -> list[ImageSource]:
    return [ImageSource(name=f"{cls}/{name}", data=data, labels={"class": cls})
            for name, data, cls in make_probe_images(n)]


def test_register_and_read_back_in_order(store: FilesystemStore) -> None:
    images = _sources(7)
    manifest = register_dataset(store, "tiny", images, shard_size=3)
    assert manifest.num_images == 7 and [len(s.images) for s in manifest.shards] == [3, 3, 1]
    assert [s.index for s in manifest.shards] == [0, 1, 2]
    loaded = load_manifest(store, "tiny")
    assert loaded == manifest
    got = [pair for shard in loaded.shards for pair in read_shard(store, shard)]
    assert [e.name for e, _ in got] == [i.name for i in images]
    assert [b for _, b in got] == [i.data for i in images]
    assert got[0][0].labels["class"] == "red" and got[0][0].sha256 == sha256_hex(images[0].data)


def test_reregistering_reuses_shards_and_digest(store: FilesystemStore, tmp_path: Path) -> None:
    m1 = register_dataset(store, "a", _sources(5), shard_size=2)
    before = {k: (store.root / k).stat().st_mtime_ns for k in store.list("datasets/shards/")}
    m2 = register_dataset(store, "b", _sources(5), shard_size=2)
    after = {k: (store.root / k).stat().st_mtime_ns for k in store.list("datasets/shards/")}
    assert before == after and m1.digest == m2.digest
    assert [s.ref.key for s in m1.shards] == [s.ref.key for s in m2.shards]


def test_images_from_paths(store: FilesystemStore, probe_folder: Path) -> None:
    files = sorted(probe_folder.rglob("*.png"))
    sources = [ImageSource(name=f.relative_to(probe_folder).as_posix(), path=f) for f in files]
    manifest = register_dataset(store, "folder", sources)
    assert manifest.num_images == len(files) == 24 and len(manifest.shards) == 1


def test_bad_image_error_names_file(store: FilesystemStore) -> None:
    """The message used to show PIL's `<_io.BytesIO object at 0x...>` and the flag as on_bad_image=skip."""
    images = _sources(3) + [ImageSource(name="broken.png", data=b"not an image")]
    with pytest.raises(BadImageError) as info:
        register_dataset(store, "bad", images)
    message = str(info.value)
    assert "image 'broken.png' is not usable (not in an image format PIL can read" in message
    assert "--on-bad-image skip" in message and "on_bad_image: skip" in message
    assert "BytesIO" not in message and "0x" not in message
    assert store.list("datasets/manifests/") == []


def test_bad_image_skip_counts(store: FilesystemStore) -> None:
    images = _sources(3)
    images.insert(1, ImageSource(name="broken.png", data=b"\x89PNG\r\n\x1a\n garbage"))
    manifest = register_dataset(store, "skip", images, on_bad_image="skip")
    assert manifest.num_images == 3
    assert manifest.info["skipped_images"] == "1" and manifest.info["skipped_names"] == "broken.png"


def test_truncated_jpeg_is_decided_at_registration(store: FilesystemStore) -> None:
    """verify() accepts a truncated JPEG that the services cannot decode; registration must not."""
    images = _sources(4)
    images.insert(2, ImageSource(name="cut.jpg", data=truncated_jpeg()))
    with pytest.raises(BadImageError, match="'cut.jpg' is not usable.*truncated"):
        register_dataset(store, "cut", images)
    manifest = register_dataset(store, "cut", images, on_bad_image="skip", shard_size=2)
    assert manifest.num_images == 4 and manifest.info["skipped_names"] == "cut.jpg"
    assert [e.name for s in manifest.shards for e in s.images] == [i.name for i in images if i.name != "cut.jpg"]


def test_pixel_limit_at_registration(store: FilesystemStore) -> None:
    images = _sources(3)  # 32x32 each
    with pytest.raises(BadImageError, match="1,024 pixels is over the limit of 1,000"):
        register_dataset(store, "limit", images, max_pixels=1000)
    assert register_dataset(store, "limit", images, max_pixels=1024).num_images == 3


def test_many_images_validated_in_order(store: FilesystemStore) -> None:
    """Decoding runs on several threads; shards keep the dataset order and skip decisions."""
    images = _sources(40)
    bad = {5, 17, 33}
    for i in sorted(bad, reverse=True):
        images.insert(i, ImageSource(name=f"bad{i}.png", data=b"not an image"))
    manifest = register_dataset(store, "many", images, on_bad_image="skip", shard_size=7)
    assert [e.name for s in manifest.shards for e in s.images] == [i.name for i in images
                                                                  if not i.name.startswith("bad")]
    assert manifest.info["skipped_names"] == ",".join(f"bad{i}.png" for i in sorted(bad))


def test_validation_threads_follow_the_cores_this_process_may_use(store: FilesystemStore,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoding pool is sized from the affinity mask (a container's cpuset), as the services'
    prefetch is, not from os.cpu_count() (the host's cores), and keeps the dataset order."""
    import threading

    from cdissect_common import manifest as manifest_module

    threads: set[str] = set()
    decode = manifest_module.decode_image

    def recording(name: str, data: bytes, max_pixels: int):
        threads.add(threading.current_thread().name)
        return decode(name, data, max_pixels)

    monkeypatch.setattr(manifest_module, "decode_image", recording)
    monkeypatch.setattr(manifest_module, "available_cores", lambda: 1)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    images = _sources(12)
    manifest = register_dataset(store, "one-core", images, shard_size=5)
    assert [e.name for s in manifest.shards for e in s.images] == [i.name for i in images]
    assert len(threads) == 1 and next(iter(threads)).startswith("validate")


def test_unknown_dataset_lists_known(store: FilesystemStore) -> None:
    register_dataset(store, "known-one", _sources(1))
    with pytest.raises(DatasetNotFoundError, match="registered: known-one"):
        load_manifest(store, "unknown")


@pytest.mark.parametrize("kwargs,needle", [
    ({"name": "bad name"}, "invalid dataset name"),
    ({"on_bad_image": "ignore"}, "on_bad_image must be one of"),
    ({"shard_size": 0}, "shard_size must be a positive"),
])
def test_bad_arguments(store: FilesystemStore, kwargs: dict, needle: str) -> None:
    args = {"name": "ok", "images": _sources(1), **kwargs}
    with pytest.raises(DatasetError, match=needle):
        register_dataset(store, **args)


def test_duplicate_names_and_empty(store: FilesystemStore) -> None:
    one = _sources(1)
    with pytest.raises(DatasetError, match="occurs twice"):
        register_dataset(store, "dup", one + one)
    with pytest.raises(DatasetError, match="no readable images"):
        register_dataset(store, "empty", [])


def test_corrupt_shard_detected(store: FilesystemStore) -> None:
    manifest = register_dataset(store, "c", _sources(2))
    shard = manifest.shards[0]
    shard.images[0].sha256 = "0" * 64
    shard.ref.sha256 = ""
    with pytest.raises(ShardCorruptError, match="does not match the manifest"):
        read_shard(store, shard)
