"""Arrays as artifacts: safetensors bytes (numpy, never pickle) under content-derived keys.

A key is ``{kind}/{sha256}.safetensors`` where the digest covers every field that determines
the content (model id and checkpoint digest, layer, pooling, preprocessing, input digests...)
plus the code version of the computation, so a changed input or algorithm can never be served
a stale result, and the same inputs from any run or project find the same object.
"""
from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors.numpy import save as _st_save

from cdissect.v1 import common_pb2

from .store import ObjectInfo, ObjectStore

# The version of the code that computes each kind, part of every content key: bump it whenever
# that code can change its output, so artifacts of the old code are not reused.
CODE_VERSION: dict[str, str] = {
    "embeddings/image": "1",
    "embeddings/text": "1",
    "activations": "1",
    "labels": "3",
}
# A digest of that code's source (comments and docstrings aside) when its version was last
# checked. tests/unit/test_code_versions.py recomputes it and fails, naming the stage, when the
# code changed and this record did not; its message says whether to bump and what to record.
CODE_SOURCE_DIGEST: dict[str, str] = {
    "embeddings/image": "9e3f5ca282a1f4787a32dda146c90c6f591692a04ec22644bbbeb847e0840c8a",
    "embeddings/text": "7b2b2cd4762c97ea1e55756af1fbb887e77abf1a1a2d5feb35baea604637c175",
    "activations": "66421f09af750f0a063be9bf33edb1caec712e094e89d4e19e4b2936a85a236b",
    "labels": "d3eec5832d82c4182d1e7787d761a603c2702eb4f0db6b97ce59459c40576fc2",
}
# Array names inside single-array artifacts.
EMBEDDINGS = "embeddings"
ACTIVATIONS = "activations"
REF_META = "cdissect-ref"


class ArtifactError(Exception):
    """An artifact cannot be decoded or does not match its reference."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"content_key field value {value!r} of type {type(value).__name__} is not JSON-serialisable; "
                    f"pass strings, numbers, lists or dicts")


def canonical_json(fields: Mapping[str, Any]) -> str:
    """Deterministic JSON (sorted keys, no spaces) of key fields."""
    return json.dumps(_jsonable(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_key(kind: str, **fields: Any) -> str:
    """``{kind}/{sha256 of canonical JSON of fields + CODE_VERSION[kind]}.safetensors``."""
    if kind not in CODE_VERSION:
        raise ValueError(f"unknown artifact kind {kind!r}; known kinds: {', '.join(CODE_VERSION)}")
    payload = canonical_json({"fields": fields, "code_version": CODE_VERSION[kind], "kind": kind})
    return f"{kind}/{hashlib.sha256(payload.encode()).hexdigest()}.safetensors"


def encode_arrays(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Safetensors bytes of named numpy arrays with string metadata, the same bytes every time.

    The safetensors library writes its metadata map in a per-process random order, so the same
    arrays used to encode to different bytes (and digests) in two processes; two writers of one
    content key then invalidated each other's refs. The header is therefore rewritten as
    canonical JSON (sorted keys, no spaces, padded to 8 bytes as the format asks); the tensor
    bytes and their offsets are untouched, so any safetensors reader loads the result.
    """
    if not arrays:
        raise ValueError("encode_arrays needs at least one array")
    clean = {}
    for name, arr in arrays.items():
        a = np.asarray(arr)
        if a.dtype == object:
            raise TypeError(f"array {name!r} has dtype object; only numeric/bool arrays can be stored")
        clean[name] = np.ascontiguousarray(a)
    raw = _st_save(clean, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.dumps(json.loads(raw[8:8 + header_len]), sort_keys=True, separators=(",", ":"),
                        ensure_ascii=True).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + raw[8 + header_len:]


def decode_arrays(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays and metadata from safetensors bytes."""
    from safetensors.numpy import load

    if len(data) < 8:
        raise ArtifactError("artifact is shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + header_len])
        arrays = load(data)
    except Exception as exc:  # noqa: BLE001 - any decode failure means a bad artifact
        raise ArtifactError(f"artifact is not valid safetensors: {exc}") from exc
    return arrays, dict(header.get("__metadata__", {}) or {})


def put_arrays(store: ObjectStore, key: str, arrays: Mapping[str, np.ndarray],
               producer: Mapping[str, str] | None = None, primary: str | None = None) -> common_pb2.ArtifactRef:
    """Encode and store arrays atomically under a content key; the ref carries dtype/shape of the primary array.

    A content key names one result, so an object already stored under it is kept (the put is
    a no-op) and its ref returned: concurrent runs computing the same shard agree on one object.

    ``primary`` defaults to the only array when there is one; multi-array artifacts without
    one get an empty dtype/shape.
    """
    producer = {str(k): str(v) for k, v in (producer or {}).items()}
    if primary is None and len(arrays) == 1:
        primary = next(iter(arrays))
    dtype, shape = "", []
    if primary is not None:
        if primary not in arrays:
            raise KeyError(f"primary array {primary!r} not among {sorted(arrays)}")
        main = np.asarray(arrays[primary])
        dtype, shape = str(main.dtype), [int(s) for s in main.shape]
    data = encode_arrays(arrays, metadata=producer)
    info = json.dumps({"dtype": dtype, "shape": shape, "producer": producer}, sort_keys=True, ensure_ascii=True)
    ref, written = store.put_if_absent(key, data, metadata={REF_META: info})
    if not written:
        # Another writer stored this content key first (e.g. a run of another project, or the
        # same shard retried on a second replica): its object stands, and the ref says so.
        return ref_from_info(store, store.stat(key))
    ref.dtype = dtype
    ref.shape.extend(shape)
    ref.producer.update(producer)
    return ref


def ref_from_info(store: ObjectStore, info: ObjectInfo) -> common_pb2.ArtifactRef:
    """Rebuild a full ArtifactRef from the store's metadata of an artifact written by put_arrays."""
    ref = common_pb2.ArtifactRef(bucket=store.bucket, key=info.key, sha256=info.sha256)
    raw = info.metadata.get(REF_META)
    if raw:
        meta = json.loads(raw)
        ref.dtype = meta.get("dtype", "")
        ref.shape.extend(int(s) for s in meta.get("shape", []))
        ref.producer.update(meta.get("producer", {}))
    return ref


def find_artifact(store: ObjectStore, key: str) -> common_pb2.ArtifactRef | None:
    """The ref of an existing artifact under ``key``, or None (the idempotency check of shard RPCs)."""
    from .store import ObjectNotFoundError

    try:
        return ref_from_info(store, store.stat(key))
    except ObjectNotFoundError:
        return None


def get_arrays(store: ObjectStore, ref: common_pb2.ArtifactRef | str) -> dict[str, np.ndarray]:
    """Read and decode an artifact, verifying the digest the ref carries."""
    return read_artifact(store, ref)[0]


def read_artifact(store: ObjectStore, ref: common_pb2.ArtifactRef | str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays and producer metadata of an artifact (by ref, digest verified, or by key)."""
    if isinstance(ref, str):
        data = store.get(ref)
        key = ref
    else:
        if ref.bucket and store.bucket and ref.bucket != store.bucket:
            raise ArtifactError(f"artifact {ref.key!r} lives in bucket {ref.bucket!r}, but this store is "
                                f"{store.url}; point the service at the same store as the caller")
        data = store.get(ref.key, sha256=ref.sha256 or None)
        key = ref.key
    try:
        return decode_arrays(data)
    except ArtifactError as exc:
        raise ArtifactError(f"{key}: {exc}") from None
