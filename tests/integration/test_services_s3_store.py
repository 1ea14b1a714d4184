"""The S3 backend of the object store against a real S3 server (SeaweedFS): atomic puts,
metadata, listing, digests, and waiting out an outage of the server."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cdissect_common import artifacts
from cdissect_common.config import load_settings
from cdissect_common.manifest import ImageSource, load_manifest, read_shard, register_dataset
from cdissect_common.retry import RetryPolicy
from cdissect_common.store import DigestMismatchError, ObjectNotFoundError, S3Store, open_store
from tests.conftest import make_probe_images

pytestmark = pytest.mark.slow


@pytest.fixture
def s3(seaweedfs, request) -> S3Store:
    settings = load_settings(env=seaweedfs.env(), config_file=None)
    prefix = request.node.name.replace("[", "-").replace("]", "")
    return open_store(f"s3://{seaweedfs.bucket}/{prefix}", settings)


def test_put_get_stat_list_delete(s3: S3Store) -> None:
    ref = s3.put("a/b.bin", b"payload", {"kind": "test"})
    assert ref.bucket == s3.bucket and ref.key == "a/b.bin"
    assert s3.get("a/b.bin", sha256=ref.sha256) == b"payload"
    info = s3.stat("a/b.bin")
    assert (info.size, info.sha256, info.metadata["kind"]) == (7, ref.sha256, "test")
    s3.put("a/c.bin", b"c")
    assert s3.list("a/") == ["a/b.bin", "a/c.bin"]
    assert s3.list("") == ["a/b.bin", "a/c.bin"]
    # the temporary upload objects are gone, not merely hidden
    raw = [o.object_name for o in s3.client.list_objects(s3.bucket, prefix=s3.prefix, recursive=True)]
    assert sorted(raw) == [s3.prefix + "a/b.bin", s3.prefix + "a/c.bin"]
    s3.delete("a/c.bin")
    assert not s3.exists("a/c.bin")
    with pytest.raises(ObjectNotFoundError):
        s3.get("a/c.bin")
    with pytest.raises(DigestMismatchError):
        s3.get("a/b.bin", sha256="0" * 64)


def test_artifacts_and_manifest_on_s3(s3: S3Store) -> None:
    ref = artifacts.put_arrays(s3, "activations/x.safetensors", {"activations": np.eye(3, dtype=np.float32)},
                               {"layer": "fc"})
    assert artifacts.find_artifact(s3, ref.key) == ref
    np.testing.assert_array_equal(artifacts.get_arrays(s3, ref)["activations"], np.eye(3))
    images = [ImageSource(name=n, data=d, labels={"class": c}) for n, d, c in make_probe_images(5)]
    manifest = register_dataset(s3, "s3set", images, shard_size=2)
    assert load_manifest(s3, "s3set") == manifest
    assert [e.name for s in manifest.shards for e, _ in read_shard(s3, s)] == [i.name for i in images]


def test_the_conditional_copy_keeps_an_existing_object(s3: S3Store) -> None:
    """The content-key put relies on S3Store._copy_if_absent, which goes through minio's private
    request method (minio has no parameter for If-None-Match on a copy; it is pinned in
    requirements.lock). This fails loudly if a minio upgrade changes that method or drops the
    header, or if the server ignores the condition."""
    from minio.error import S3Error

    first, written = s3.put_if_absent("c/first.bin", b"first", {"writer": "a"})
    assert written
    s3.put("c/other.bin", b"other")
    with pytest.raises(S3Error) as info:
        s3._copy_if_absent(s3._name("c/other.bin"), s3._name("c/first.bin"))
    assert info.value.code in {"PreconditionFailed", "ConditionalRequestConflict"}
    assert s3.get("c/first.bin", sha256=first.sha256) == b"first" and s3.stat("c/first.bin").metadata["writer"] == "a"
    s3._copy_if_absent(s3._name("c/other.bin"), s3._name("c/copy.bin"))
    assert s3.get("c/copy.bin") == b"other"
    again, written = s3.put_if_absent("c/first.bin", b"second")
    assert not written and again == first


def test_calls_wait_out_a_server_outage(seaweedfs, s3: S3Store) -> None:
    s3.policy = RetryPolicy(max_attempts=100, max_backoff=1.0, max_total_seconds=60)
    s3.put("before.bin", b"x")
    seaweedfs.stop()
    restarter = threading.Timer(3.0, seaweedfs.start)
    restarter.start()
    try:
        start = time.monotonic()
        ref = s3.put("during.bin", b"written while the server was down")
        assert time.monotonic() - start > 2.0
        assert s3.get("during.bin", sha256=ref.sha256) == b"written while the server was down"
        assert s3.get("before.bin") == b"x"
    finally:
        restarter.join()
        seaweedfs.start()
