"""Probe sets in object storage: image shards (tar of image bytes) plus a DatasetManifest.

The manifest fixes the dataset order once (never shuffled), records per image its sha256 and
labels, and names each shard by the sha256 of its tar bytes (``datasets/shards/<sha>.tar``).
Tars are written deterministically (sorted nothing, fixed mtimes/owners), so registering the
same images again produces the same shards and reuses them.
"""
from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from cdissect.v1 import common_pb2

from .config import DEFAULTS
from .images import UnreadableImageError, decode_image
from .parallel import available_cores, ordered_map
from .store import ObjectNotFoundError, ObjectStore, sha256_hex
from .vocabulary import BAD_IMAGE_POLICIES

MANIFEST_PREFIX = "datasets/manifests/"
SHARD_PREFIX = "datasets/shards/"
DEFAULT_SHARD_SIZE = 1000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


class DatasetError(ValueError):
    """A probe set cannot be registered or read; the message names the image or dataset and the fix."""


class DatasetNotFoundError(DatasetError, LookupError):
    """No manifest is registered under that name."""


class BadImageError(DatasetError):
    """An image cannot be decoded (or is over the pixel limit)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"image {name!r} is not usable ({reason}); remove or replace it, or skip unreadable "
                         f"images with `--on-bad-image skip` (`on_bad_image: skip` in a job spec; the run lists "
                         f"the images it skipped)")
        self.name = name
        self.reason = reason


class ShardCorruptError(DatasetError):
    """A shard's bytes do not match the digests the manifest records."""


@dataclass(frozen=True)
class ImageSource:
    """One image to register: a name (unique in the dataset), its bytes or a path, and labels."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    labels: dict[str, str] | None = None


def manifest_key(name: str) -> str:
    """Store key of a dataset's manifest."""
    return f"{MANIFEST_PREFIX}{check_dataset_name(name)}.json"


def check_dataset_name(name: str) -> str:
    """Dataset names become keys: letters, digits, '.', '_' and '-'."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DatasetError(f"invalid dataset name {name!r}: use letters, digits, '.', '_' and '-' "
                           f"(starting with a letter or digit)")
    return name


def _image_bytes(image: Any) -> bytes:
    """Bytes of an image-like object: .data, else .path, else .path_or_bytes (cdissect_cli.probesets' ProbeImage)."""
    data = getattr(image, "data", None)
    if data is not None:
        return bytes(data)
    path = getattr(image, "path", None)
    if path is None:
        source = getattr(image, "path_or_bytes", None)
        if isinstance(source, (bytes, bytearray)):
            return bytes(source)
        path = source
    if path is None:
        raise DatasetError(f"image {getattr(image, 'name', image)!r} has neither bytes nor a path")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read image file {path}: {exc.strerror}") from exc


def validate_image(name: str, data: bytes, max_pixels: int = DEFAULTS["max_image_pixels"]) -> None:
    """Raise BadImageError unless the bytes decode completely, as the services will decode them.

    A full decode (``images.decode_image``), not PIL's ``verify()``: verify accepts a truncated
    JPEG that the services cannot decode, and an image skipped there but not here would shift
    every later row of the run. Images over ``max_pixels`` are refused too.
    """
    try:
        decode_image(name, data, max_pixels)
    except UnreadableImageError as exc:
        raise BadImageError(name, exc.reason) from None


def _validated(images: Iterable[Any], max_pixels: int) -> Iterator[tuple[str, bytes, Any, str | None]]:
    """(name, bytes, image, reason it is unreadable or None) per image, in order.

    Images are decoded on up to four threads (PIL decodes without the GIL), a bounded window
    ahead of the caller, so registering a large folder neither takes one core for hours nor holds
    more than a few dozen encoded images and four decoded ones in memory.
    """
    def problem(name: str, data: bytes) -> str | None:
        try:
            validate_image(name, data, max_pixels)
            return None
        except BadImageError as exc:
            return exc.reason

    def checked(image: Any) -> tuple[str, bytes, Any, str | None]:
        name = str(image.name)
        data = _image_bytes(image)
        return name, data, image, problem(name, data)

    workers = min(4, available_cores())
    return ordered_map(checked, images, workers, ahead=4 * workers, name="validate")


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A deterministic tar of (name, bytes), in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write_shard(store: ObjectStore, manifest: common_pb2.DatasetManifest,
                 chunk: list[tuple[str, bytes, dict[str, str]]], digests: list[str]) -> None:
    """Append one shard to the manifest, uploading its tar unless the same tar is stored already."""
    shard = manifest.shards.add(index=len(manifest.shards))
    members = []
    for img_name, data, labels in chunk:
        digest = sha256_hex(data)
        digests.append(digest)
        shard.images.add(name=img_name, sha256=digest, labels=labels)
        members.append((img_name, data))
    tar = _tar_bytes(members)
    key = f"{SHARD_PREFIX}{sha256_hex(tar)}.tar"
    shard.ref.CopyFrom(store.put(key, tar, metadata={"images": str(len(members))}, if_absent=True))
    shard.ref.producer["kind"] = "shard"


def register_dataset(store: ObjectStore, name: str, images: Iterable[Any], shard_size: int = DEFAULT_SHARD_SIZE,
                     on_bad_image: str = "error", info: dict[str, str] | None = None,
                     max_pixels: int = DEFAULTS["max_image_pixels"]) -> common_pb2.DatasetManifest:
    """Validate images (a full decode each), write shards (reusing existing ones) and publish the manifest.

    ``images`` yields objects with ``.name``, ``.labels`` and ``.data`` (bytes) or ``.path``.
    ``on_bad_image``: ``error`` raises BadImageError naming the file; ``skip`` leaves it out and
    records the count and names in ``manifest.info``. This is the one place where images are
    skipped: the services then decode every image of every shard, or refuse the shard.
    ``max_pixels`` (0 = none) refuses larger images like unreadable ones.
    """
    check_dataset_name(name)
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DatasetError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise DatasetError(f"shard_size must be a positive integer, got {shard_size!r}")
    manifest = common_pb2.DatasetManifest(name=name)
    seen: set[str] = set()
    skipped: list[str] = []
    digests: list[str] = []
    chunk: list[tuple[str, bytes, dict[str, str]]] = []
    def unique(images: Iterable[Any]) -> Iterator[Any]:
        for image in images:
            if str(image.name) in seen:
                raise DatasetError(f"image name {str(image.name)!r} occurs twice in dataset {name!r}; names must "
                                   f"be unique (use paths relative to the probe folder)")
            seen.add(str(image.name))
            yield image

    with closing(_validated(unique(images), max_pixels)) as validated:
        for img_name, data, image, problem in validated:
            if problem is not None:
                if on_bad_image == "error":
                    raise BadImageError(img_name, problem)
                skipped.append(img_name)
                continue
            labels = {str(k): str(v) for k, v in (getattr(image, "labels", None) or {}).items()}
            chunk.append((img_name, data, labels))
            if len(chunk) == shard_size:
                _write_shard(store, manifest, chunk, digests)
                chunk = []
    if chunk:
        _write_shard(store, manifest, chunk, digests)
    if not digests:
        raise DatasetError(f"dataset {name!r} has no readable images"
                           + (f" ({len(skipped)} skipped as unreadable)" if skipped else "")
                           + "; point it at a folder of JPEG/PNG files")
    manifest.num_images = len(digests)
    manifest.digest = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    manifest.info.update(info or {})
    manifest.info["shard_size"] = str(shard_size)
    manifest.info["skipped_images"] = str(len(skipped))
    if skipped:
        manifest.info["skipped_names"] = ",".join(skipped)
    store.put(manifest_key(name), manifest_to_json(manifest).encode(), metadata={"kind": "dataset-manifest"})
    return manifest


def manifest_to_json(manifest: common_pb2.DatasetManifest) -> str:
    """The stored JSON form of a manifest."""
    return json_format.MessageToJson(manifest, sort_keys=True, indent=1)


def list_datasets(store: ObjectStore) -> list[str]:
    """Names of the registered datasets."""
    return [k[len(MANIFEST_PREFIX):-len(".json")] for k in store.list(MANIFEST_PREFIX) if k.endswith(".json")]


def load_manifest(store: ObjectStore, name: str) -> common_pb2.DatasetManifest:
    """The registered manifest of ``name``; unknown names list the registered ones."""
    key = manifest_key(name)
    try:
        data = store.get(key)
    except ObjectNotFoundError:
        known = list_datasets(store)
        raise DatasetNotFoundError(
            f"no dataset {name!r} is registered in {store.url}; registered: {', '.join(known) or '(none)'}; "
            f"register it first (cdissect datasets add)") from None
    return json_format.Parse(data, common_pb2.DatasetManifest())


def read_shard(store: ObjectStore, shard: common_pb2.Shard) -> list[tuple[common_pb2.ImageEntry, bytes]]:
    """The images of a shard in order, each checked against the manifest's digest."""
    if not shard.ref.key:
        raise DatasetError(f"shard {shard.index} has no object key; pass the shard from a registered manifest")
    data = store.get(shard.ref.key, sha256=shard.ref.sha256 or None)
    out: list[tuple[common_pb2.ImageEntry, bytes]] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        if len(members) != len(shard.images):
            raise ShardCorruptError(f"shard {shard.ref.key} holds {len(members)} images, the manifest lists "
                                    f"{len(shard.images)}; re-register the dataset")
        for entry, member in zip(shard.images, members):
            fh = tar.extractfile(member)
            image = fh.read() if fh else b""
            if member.name != entry.name or sha256_hex(image) != entry.sha256:
                raise ShardCorruptError(f"image {entry.name!r} in shard {shard.ref.key} does not match the manifest "
                                        f"(name or sha256 differ); re-register the dataset")
            out.append((entry, image))
    return out
