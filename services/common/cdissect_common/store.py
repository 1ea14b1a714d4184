"""Object storage behind one interface, with two backends: the filesystem and S3/MinIO.

Writes are atomic: the bytes go to a temporary name, their sha256 is verified, and only then
does the object appear under its final key (``os.replace`` on a filesystem; a server-side copy
from a verified temporary key on S3). A reader therefore never sees a partial object, and a
process that dies mid-write leaves nothing under a final key. Every S3 call goes through the
one retry policy, so a store that is unreachable for a few seconds only delays callers.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from cdissect.v1 import common_pb2

from .config import ENV_VARS, Settings
from .retry import DEFAULT_POLICY, RetryPolicy, is_retryable_store

T = TypeVar("T")
_KEY_RE = re.compile(r"^[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*$")
_META_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9\-]*$")
SHA256_META = "sha256"
TMP_PREFIX = ".tmp/"


class StoreError(Exception):
    """Base class of object-store errors."""


class ObjectNotFoundError(StoreError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "object not found"


class DigestMismatchError(StoreError):
    """Bytes read or written do not have the expected sha256 (corruption or a racing writer)."""


class StoreConfigError(StoreError, ValueError):
    """The store URL or its settings cannot be used; the message says what to change."""


class StoreUnavailableError(StoreError):
    """The store did not answer (connection refused, 5xx) for the whole retry budget; the message
    names the store and its endpoint."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object without reading it."""

    key: str
    size: int
    sha256: str
    metadata: Mapping[str, str] = field(default_factory=dict)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def check_key(key: str) -> str:
    """Validate an object key: relative, '/'-separated, no '..', safe characters only."""
    if not isinstance(key, str) or not _KEY_RE.match(key) or any(p in {".", ".."} for p in key.split("/")):
        raise ValueError(f"invalid object key {key!r}: use relative '/'-separated names of letters, digits, "
                         f"'.', '_' and '-' (no '..', no leading '/')")
    return key


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    clean: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not _META_KEY_RE.match(k):
            raise ValueError(f"invalid metadata key {k!r}: use lower-case letters, digits and '-'")
        text = str(v)
        if not text.isascii():
            raise ValueError(f"metadata value of {k!r} must be ASCII (S3 headers); JSON-encode it with ensure_ascii")
        clean[k] = text
    return clean


class ObjectStore(ABC):
    """Interface of every backend. Keys are relative paths such as ``embeddings/image/<sha>.safetensors``."""

    bucket: str = ""
    url: str = ""

    @abstractmethod
    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> common_pb2.ArtifactRef:
        """Store ``data`` atomically under ``key`` and return its reference (bucket, key, sha256)."""

    @abstractmethod
    def get(self, key: str, sha256: str | None = None) -> bytes:
        """The bytes under ``key``; with ``sha256`` given, verify them (DigestMismatchError if not)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, digest and metadata of ``key`` (ObjectNotFoundError if absent)."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix`` (temporary upload objects excluded)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing an absent key is not an error."""

    def exists(self, key: str) -> bool:
        """True when ``key`` is stored."""
        try:
            self.stat(key)
            return True
        except ObjectNotFoundError:
            return False

    def ref(self, key: str) -> common_pb2.ArtifactRef:
        """A reference to an existing object (bucket, key, sha256)."""
        info = self.stat(key)
        return common_pb2.ArtifactRef(bucket=self.bucket, key=key, sha256=info.sha256)

    def _verify(self, key: str, data: bytes, sha256: str | None) -> bytes:
        if sha256 and sha256_hex(data) != sha256:
            raise DigestMismatchError(f"object {key!r} in {self.url} has sha256 {sha256_hex(data)}, expected "
                                      f"{sha256}: it was changed or corrupted; delete it and recompute")
        return data


class FilesystemStore(ObjectStore):
    """Objects as files under a root folder; metadata as JSON side files under ``.meta/``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"
        try:
            (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreConfigError(f"cannot create the store folder {self.root}: {exc.strerror}; set "
                                   f"{ENV_VARS['store']} to a writable file:// path") from exc

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _meta_path(self, key: str) -> Path:
        return self.root / ".meta" / (check_key(key) + ".json")

    def _write_atomic(self, target: Path, data: bytes, key: str) -> None:
        """Write a temporary file, fsync, re-read and verify its sha256, then rename it over ``target``."""
        fd, tmp_name = tempfile.mkstemp(dir=self.root / ".tmp", prefix="put-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            written = sha256_hex(Path(tmp_name).read_bytes())
            if written != sha256_hex(data):
                raise DigestMismatchError(f"write of {key!r} to {self.root} was corrupted (sha256 {written} != "
                                          f"{sha256_hex(data)}); check the disk and retry")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> common_pb2.ArtifactRef:
        """Write to a temporary file, verify its digest, then rename over the final path."""
        path = self._path(key)
        meta = _check_metadata(metadata)
        digest = sha256_hex(data)
        meta[SHA256_META] = digest
        # The side file first: once the data file is visible, its metadata is too.
        self._write_atomic(self._meta_path(key), json.dumps(meta, sort_keys=True).encode(), key)
        self._write_atomic(path, data, key)
        return common_pb2.ArtifactRef(bucket=self.bucket, key=key, sha256=digest)

    def get(self, key: str, sha256: str | None = None) -> bytes:
        """Read the file of ``key``."""
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from None
        return self._verify(key, data, sha256)

    def stat(self, key: str) -> ObjectInfo:
        """Size from the file, digest and metadata from the side file (recomputed if missing)."""
        path = self._path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from None
        if not path.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self.url}")
        try:
            meta = json.loads(self._meta_path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            meta = {SHA256_META: sha256_hex(path.read_bytes())}
        return ObjectInfo(key=key, size=size, sha256=meta.get(SHA256_META, ""), metadata=meta)

    def list(self, prefix: str = "") -> list[str]:
        """Walk the folder below the prefix's directory part."""
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d not in {".tmp", ".meta"}]
                rel_dir = ""
            for name in filenames:
                key = f"{rel_dir}/{name}" if rel_dir else name
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Unlink the file and its side file."""
        self._path(key).unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)


class S3Store(ObjectStore):
    """Objects in an S3 bucket through the ``minio`` client; every call retried by the policy."""

    def __init__(self, bucket: str, endpoint: str, access_key: str, secret_key: str, secure: bool = False,
                 region: str = "", prefix: str = "", policy: RetryPolicy = DEFAULT_POLICY,
                 create_bucket: bool = True) -> None:
        import urllib3
        from minio import Minio

        if not endpoint:
            raise StoreConfigError(f"the S3 store s3://{bucket} needs an endpoint: set {ENV_VARS['s3_endpoint']} "
                                   f"(host:port) and the access/secret keys")
        endpoint = endpoint.split("://", 1)[-1].rstrip("/")
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.policy = policy
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=300.0), maxsize=16,
            retries=urllib3.Retry(total=2, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]))
        self.client = Minio(endpoint, access_key=access_key or None, secret_key=secret_key or None,
                            secure=secure, region=region or None, http_client=http)
        if create_bucket:
            self._retry(self._ensure_bucket, "create bucket")

    def _ensure_bucket(self) -> None:
        from minio.error import S3Error

        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        """``fn`` under the retry policy; a store still unreachable after the budget raises
        StoreUnavailableError naming the store (once, for every caller)."""
        try:
            return self.policy.call(fn, is_retryable_store, describe=f"{what} ({self.url})")
        except Exception as exc:
            if not is_retryable_store(exc):
                raise
            cause = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise StoreUnavailableError(
                f"the object store {self.url} at {self.endpoint} did not answer for "
                f"{self.policy.max_total_seconds:g}s ({ENV_VARS['retry_timeout']}) while trying to {what}: "
                f"{type(exc).__name__}: {cause}; check that the S3 server runs and "
                f"{ENV_VARS['s3_endpoint']} points at it") from exc

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    @staticmethod
    def _is_missing(exc: Exception) -> bool:
        from minio.error import S3Error

        return isinstance(exc, S3Error) and exc.code in {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> common_pb2.ArtifactRef:
        """Upload to a temporary key, verify it (server MD5 or read-back), server-side copy to the key, drop the temp."""
        from minio.commonconfig import CopySource

        name = self._name(key)
        meta = _check_metadata(metadata)
        digest = sha256_hex(data)
        meta[SHA256_META] = digest
        tmp = self.prefix + TMP_PREFIX + uuid.uuid4().hex

        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()

        def upload() -> None:
            result = self.client.put_object(self.bucket, tmp, io.BytesIO(data), len(data), metadata=meta)
            # A single-part upload's ETag is the MD5 the server computed of what it stored;
            # anything else (multipart ETags) is verified by reading the bytes back.
            if (result.etag or "").strip('"') != md5:
                self._verify(tmp, self._read(tmp), digest)
            self.client.copy_object(self.bucket, name, CopySource(self.bucket, tmp))
            published = self._stat_raw(name)
            if published.sha256 != digest:
                raise DigestMismatchError(f"published {key!r} carries sha256 {published.sha256}, expected {digest}")

        try:
            self._retry(upload, f"put {key}")
        finally:
            try:  # one try, not the retry budget: a store outage must not be waited out twice
                self.client.remove_object(self.bucket, tmp)
            except Exception:  # noqa: BLE001 - a leaked temp object is harmless, never fatal
                pass
        return common_pb2.ArtifactRef(bucket=self.bucket, key=key, sha256=digest)

    def _read(self, name: str) -> bytes:
        response = self.client.get_object(self.bucket, name)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def get(self, key: str, sha256: str | None = None) -> bytes:
        """Download ``key`` (retried), optionally verifying its digest."""
        name = self._name(key)

        def read() -> bytes:
            try:
                return self._read(name)
            except Exception as exc:
                if self._is_missing(exc):
                    raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from None
                raise

        return self._verify(key, self._retry(read, f"get {key}"), sha256)

    def _stat_raw(self, name: str) -> ObjectInfo:
        st = self.client.stat_object(self.bucket, name)
        meta = {k.lower()[len("x-amz-meta-"):]: v for k, v in (st.metadata or {}).items()
                if k.lower().startswith("x-amz-meta-")}
        return ObjectInfo(key=name[len(self.prefix):], size=int(st.size or 0), sha256=meta.get(SHA256_META, ""),
                          metadata=meta)

    def stat(self, key: str) -> ObjectInfo:
        """HEAD the object (retried); metadata keys come back without the ``x-amz-meta-`` prefix."""
        name = self._name(key)

        def head() -> ObjectInfo:
            try:
                return self._stat_raw(name)
            except Exception as exc:
                if self._is_missing(exc):
                    raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from None
                raise

        return self._retry(head, f"stat {key}")

    def list(self, prefix: str = "") -> list[str]:
        """List keys recursively (retried), excluding temporary uploads."""
        full = self.prefix + prefix

        def listing() -> list[str]:
            return [o.object_name[len(self.prefix):]
                    for o in self.client.list_objects(self.bucket, prefix=full, recursive=True)]

        keys = self._retry(listing, f"list {prefix}")
        return sorted(k for k in keys if not k.startswith(TMP_PREFIX))

    def delete(self, key: str) -> None:
        """Remove the object (retried)."""
        name = self._name(key)
        self._retry(lambda: self.client.remove_object(self.bucket, name), f"delete {key}")


def open_store(url: str | None = None, settings: Settings | None = None,
               policy: RetryPolicy = DEFAULT_POLICY) -> ObjectStore:
    """Open the store named by ``url`` (default: the configured ``store`` setting).

    ``file:///abs/path`` (or ``file://~/path``) is the filesystem store; ``s3://bucket[/prefix]``
    is S3/MinIO with endpoint and keys from the settings (``CDISSECT_S3_*``).
    """
    if settings is None:
        from .config import load_settings

        settings = load_settings()
    url = url or settings.store
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = url[len("file://"):]
        if not path:
            raise StoreConfigError(f"store URL {url!r} has no path; use file:///absolute/path")
        return FilesystemStore(Path(path).expanduser())
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreConfigError(f"store URL {url!r} has no bucket; use s3://bucket or s3://bucket/prefix")
        return S3Store(parsed.netloc, settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                       secure=settings.s3_secure, region=settings.s3_region, prefix=parsed.path, policy=policy)
    raise StoreConfigError(f"unsupported store URL {url!r} ({ENV_VARS['store']}): use file:///path for a local "
                           f"folder or s3://bucket with {ENV_VARS['s3_endpoint']} set")
