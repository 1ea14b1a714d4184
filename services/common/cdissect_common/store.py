"""Object storage behind one interface, with two backends: the filesystem and S3/MinIO.

Writes are atomic: the bytes go to a temporary name, their sha256 is verified, and only then
does the object appear under its final key (``os.replace`` on a filesystem; a server-side copy
from a verified temporary key on S3). A reader therefore never sees a partial object, and a
process that dies mid-write leaves nothing under a final key. Every S3 call goes through the
one retry policy, so a store that is unreachable for a few seconds only delays callers.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from cdissect.v1 import common_pb2

from .config import ENV_VARS, Settings
from .retry import DEFAULT_POLICY, RetryPolicy, is_retryable_store, policy_from_settings

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

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None, *,
            if_absent: bool = False) -> common_pb2.ArtifactRef:
        """Store ``data`` and its metadata atomically under ``key``; return the reference (bucket, key, sha256).

        ``if_absent=True`` is the put of a content key (one whose name is derived from what the
        bytes mean): when an object is already stored there, nothing is written and the ref of
        the stored object is returned, so concurrent writers of one key all end up pointing at
        the same bytes (the first to publish wins).
        """
        return self._put(key, data, metadata, if_absent)[0]

    def put_if_absent(self, key: str, data: bytes,
                      metadata: Mapping[str, str] | None = None) -> tuple[common_pb2.ArtifactRef, bool]:
        """``put(..., if_absent=True)`` that also says whether it wrote: (the ref, True) when ``data``
        was published under ``key``; (the ref of the stored object, False) when one was there first."""
        return self._put(key, data, metadata, True)

    @abstractmethod
    def _put(self, key: str, data: bytes, metadata: Mapping[str, str] | None,
             if_absent: bool) -> tuple[common_pb2.ArtifactRef, bool]:
        """The put of ``put`` and ``put_if_absent``: the ref and whether ``data`` was written."""

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

    def _stored_ref(self, key: str) -> common_pb2.ArtifactRef | None:
        """``ref(key)``, or None when nothing is stored under ``key`` (one stat either way)."""
        try:
            return self.ref(key)
        except ObjectNotFoundError:
            return None

    def _verify(self, key: str, data: bytes, sha256: str | None) -> bytes:
        if sha256 and sha256_hex(data) != sha256:
            raise DigestMismatchError(f"object {key!r} in {self.url} has sha256 {sha256_hex(data)}, expected "
                                      f"{sha256}: it was changed or corrupted; delete it and recompute")
        return data


class FilesystemStore(ObjectStore):
    """Objects as files under a root folder, each published with its metadata in one rename.

    Layout: ``.objects/<xx>/<id>/data`` holds an object's bytes and ``meta.json`` next to it its
    metadata (sha256 included); both are written, fsynced and verified before anything points at
    them. The object then appears under its key as a relative symbolic link to that ``data`` file,
    created in one atomic step (``symlink`` for a put ``if_absent``, a rename over the key
    otherwise). So a reader always sees bytes and metadata of the same put, whatever other
    writers do, and ``cat``-ing a key still shows the object's bytes. A process that dies
    mid-put leaves at most an unreferenced folder under ``.objects/`` that no reader sees.
    Plain files under a key (the layout of earlier versions, with ``.meta/`` side files) are
    still read.
    """

    OBJECTS = ".objects"
    _HIDDEN = {".tmp", ".meta", OBJECTS}

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"
        try:
            for folder in (".tmp", self.OBJECTS):
                (self.root / folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreConfigError(f"cannot create the store folder {self.root}: {exc.strerror}; set "
                                   f"{ENV_VARS['store']} to a writable file:// path") from exc

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _legacy_meta_path(self, key: str) -> Path:
        return self.root / ".meta" / (check_key(key) + ".json")

    def _write_object(self, key: str, data: bytes, meta: dict[str, str]) -> Path:
        """A new object folder holding ``data`` (verified after the write) and ``meta.json``."""
        oid = uuid.uuid4().hex
        folder = self.root / self.OBJECTS / oid[:2] / oid
        folder.mkdir(parents=True)
        try:
            for name, content in (("data", data), ("meta.json", json.dumps(meta, sort_keys=True).encode())):
                with open(folder / name, "wb") as fh:
                    fh.write(content)
                    fh.flush()
                    os.fsync(fh.fileno())
            written = sha256_hex((folder / "data").read_bytes())
            if written != meta[SHA256_META]:
                raise DigestMismatchError(f"write of {key!r} to {self.root} was corrupted (sha256 {written} != "
                                          f"{meta[SHA256_META]}); check the disk and retry")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder

    @staticmethod
    def _object_folder(path: Path) -> Path | None:
        """The object folder a key's link points at (None for no link: a plain file of the earlier
        layout, or nothing)."""
        try:
            return Path(os.path.normpath(path.parent / os.readlink(path))).parent
        except OSError:
            return None

    def _drop_object(self, folder: Path | None) -> None:
        if folder is not None and folder.parent.parent == self.root / self.OBJECTS:
            shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def _relinking(self) -> Iterator[None]:
        """Held while a key's link is read and replaced or removed (replacing puts, deletes; readers
        never wait): each one then removes exactly the object it unlinked and no folder is left
        unreferenced. A lock file, so processes sharing the store take turns too."""
        with open(self.root / self.OBJECTS / "replace.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _put(self, key: str, data: bytes, metadata: Mapping[str, str] | None,
             if_absent: bool) -> tuple[common_pb2.ArtifactRef, bool]:
        """Write an object folder, then link the key to it in one atomic step (see the class doc)."""
        path = self._path(key)
        meta = _check_metadata(metadata)
        stored = self._stored_ref(key) if if_absent else None
        if stored is not None:
            return stored, False
        digest = meta[SHA256_META] = sha256_hex(data)
        folder = self._write_object(key, data, meta)
        target = os.path.relpath(folder / "data", path.parent)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if if_absent:
                try:
                    os.symlink(target, path)
                except FileExistsError:  # another writer published first: theirs stands
                    shutil.rmtree(folder, ignore_errors=True)
                    return self.ref(key), False
            else:
                link = self.root / ".tmp" / f"link-{uuid.uuid4().hex}"
                os.symlink(target, link)
                with self._relinking():
                    replaced = self._object_folder(path)
                    try:
                        os.replace(link, path)
                    finally:
                        link.unlink(missing_ok=True)
                self._drop_object(replaced)
                self._legacy_meta_path(key).unlink(missing_ok=True)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return common_pb2.ArtifactRef(bucket=self.bucket, key=key, sha256=digest), True

    def _read(self, key: str, read: Callable[[Path, Path], T]) -> T:
        """``read(data file, metadata file)`` of the object under ``key`` (for a plain file of the
        earlier layout, its ``.meta/`` side file, which may be missing).

        A concurrent put may replace the object (and remove the old folder) between resolving
        the link and reading: then the link is resolved again.
        """
        path = self._path(key)
        for _attempt in range(5):
            try:
                folder = self._object_folder(path)
                if folder is None:
                    if not path.is_file():
                        break
                    return read(path, self._legacy_meta_path(key))
                return read(folder / "data", folder / "meta.json")
            except (FileNotFoundError, NotADirectoryError):
                continue
        raise ObjectNotFoundError(f"no object {key!r} in {self.url}")

    def get(self, key: str, sha256: str | None = None) -> bytes:
        """Read the bytes of ``key``."""
        return self._verify(key, self._read(key, lambda data, _meta: data.read_bytes()), sha256)

    def stat(self, key: str) -> ObjectInfo:
        """Size from the data file, digest and metadata from the object's ``meta.json``."""
        def info(data: Path, meta_path: Path) -> ObjectInfo:
            size = data.stat().st_size
            try:
                meta = json.loads(meta_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                if meta_path.name == "meta.json":
                    raise
                meta = {SHA256_META: sha256_hex(data.read_bytes())}  # earlier layout without a side file
            return ObjectInfo(key=key, size=size, sha256=meta.get(SHA256_META, ""), metadata=meta)

        return self._read(key, info)

    def list(self, prefix: str = "") -> list[str]:
        """Walk the folder below the prefix's directory part."""
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d not in self._HIDDEN]
                rel_dir = ""
            for name in filenames:
                key = f"{rel_dir}/{name}" if rel_dir else name
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Unlink the key, then remove its object folder (or the earlier layout's side file)."""
        path = self._path(key)
        with self._relinking():
            folder = self._object_folder(path)
            path.unlink(missing_ok=True)
        self._drop_object(folder)
        self._legacy_meta_path(key).unlink(missing_ok=True)


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

    def _put(self, key: str, data: bytes, metadata: Mapping[str, str] | None,
             if_absent: bool) -> tuple[common_pb2.ArtifactRef, bool]:
        """Upload to a temporary key, verify it (server MD5 or read-back), server-side copy to the key, drop the temp.

        An S3 object carries its bytes and metadata together, so the copy publishes both at once.
        With ``if_absent`` the copy is conditional (``If-None-Match: *``, honoured by MinIO,
        SeaweedFS and AWS): when another writer published the key first, its object stands and
        its ref is returned. On a server that ignores the condition, the ref returned is still
        the one of the object stored right after the copy.
        """
        from minio.commonconfig import CopySource
        from minio.error import S3Error

        name = self._name(key)
        meta = _check_metadata(metadata)
        stored_ref = self._stored_ref(key) if if_absent else None
        if stored_ref is not None:
            return stored_ref, False
        digest = meta[SHA256_META] = sha256_hex(data)
        tmp = self.prefix + TMP_PREFIX + uuid.uuid4().hex

        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()

        def upload() -> tuple[str, bool]:
            result = self.client.put_object(self.bucket, tmp, io.BytesIO(data), len(data), metadata=meta)
            # A single-part upload's ETag is the MD5 the server computed of what it stored;
            # anything else (multipart ETags) is verified by reading the bytes back.
            if (result.etag or "").strip('"') != md5:
                self._verify(tmp, self._read(tmp), digest)
            if not if_absent:
                self.client.copy_object(self.bucket, name, CopySource(self.bucket, tmp))
                return digest, True
            try:
                self._copy_if_absent(tmp, name)
                copied = True
            except S3Error as exc:
                if exc.code not in {"PreconditionFailed", "ConditionalRequestConflict"}:
                    raise
                copied = False
            stored = self._stat_raw(name).sha256
            return stored, copied and stored == digest

        try:
            stored, written = self._retry(upload, f"put {key}")
        finally:
            try:  # one try, not the retry budget: a store outage must not be waited out twice
                self.client.remove_object(self.bucket, tmp)
            except Exception:  # noqa: BLE001 - a leaked temp object is harmless, never fatal
                pass
        return common_pb2.ArtifactRef(bucket=self.bucket, key=key, sha256=stored), written

    def _copy_if_absent(self, source: str, name: str) -> None:
        """Server-side copy of ``source`` (metadata included) to ``name`` unless ``name`` exists.

        The minio client has no parameter for the ``If-None-Match`` header of a copy, so this one
        request goes through its private request method directly (signed, retried like any other
        call). minio is pinned in requirements.lock; tests/integration/test_services_s3_store.py
        (the conditional copy) and tests/reliability/test_store_races.py fail if an upgrade breaks this.
        """
        self.client._execute("PUT", self.bucket, name,  # noqa: SLF001 - see the docstring
                             headers={"x-amz-copy-source": f"/{self.bucket}/{source}", "If-None-Match": "*"})

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


def open_store(url: str | None = None, settings: Settings | None = None) -> ObjectStore:
    """Open the store named by ``url`` (default: the configured ``store`` setting).

    ``file:///abs/path`` (or ``file://~/path``) is the filesystem store; ``s3://bucket[/prefix]``
    is S3/MinIO with endpoint and keys from the settings (``CDISSECT_S3_*``), its calls retried
    for the ``retry_timeout`` setting (``retry.policy_from_settings``). ``settings`` default to
    the process's (``load_settings()``).
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
                       secure=settings.s3_secure, region=settings.s3_region, prefix=parsed.path,
                       policy=policy_from_settings(settings))
    raise StoreConfigError(f"unsupported store URL {url!r} ({ENV_VARS['store']}): use file:///path for a local "
                           f"folder or s3://bucket with {ENV_VARS['s3_endpoint']} set")
