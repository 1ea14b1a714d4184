"""Probe sets as the CLI sees them: a registered name, a folder, or a built-in probe set.

`ensure_dataset` turns a job's `probe_set` into a registered `DatasetManifest` in the store:
  1. a name already registered (`cdissect datasets add`) is used as it is;
  2. a folder is registered under `<folder name>-<8 hex of its absolute path>`;
  3. a built-in name (broden, imagenet_val, ...) is resolved by `cdissect_cli.probesets`.
Registering is skipped when a manifest with the same source fingerprint (image names, file
sizes and mtimes, shard size, bad-image policy) exists already, so a rerun does not re-read
tens of thousands of images; the shards themselves are content-addressed and reused anyway.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterable

from cdissect.v1 import common_pb2
from cdissect_common.config import DEFAULTS
from cdissect_common.manifest import (
    DatasetError, DatasetNotFoundError, list_datasets, load_manifest, manifest_key, register_dataset)
from cdissect_common.store import ObjectStore

from cdissect_cli.errors import CliError

FINGERPRINT_INFO = "source_fingerprint"


def folder_dataset_name(path: Path) -> str:
    """The dataset name a probe folder is registered under: readable and unique per location."""
    path = Path(path).expanduser().resolve()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name).strip("._-") or "probe"
    return f"{slug}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


# Bump when registration accepts or refuses images differently, so older manifests are redone.
VALIDATION = "full-decode-1"


def _fingerprint(images: list[Any], shard_size: int, on_bad_image: str, max_pixels: int) -> str:
    """Digest of what the registration would read and decide: names, labels, file size/mtime (or
    bytes), the shard size, the bad-image policy and pixel limit, and the validation rule."""
    digest = hashlib.sha256(f"{shard_size}|{on_bad_image}|{max_pixels}|{VALIDATION}".encode())
    for image in images:
        source = getattr(image, "path_or_bytes", None)
        if source is None:
            source = getattr(image, "data", None) or getattr(image, "path", None)
        if isinstance(source, (bytes, bytearray)):
            part = hashlib.sha256(source).hexdigest()
        else:
            try:
                st = os.stat(source)
                part = f"{st.st_size}:{st.st_mtime_ns}"
            except (OSError, TypeError):
                part = "missing"
        labels = sorted((getattr(image, "labels", None) or {}).items())
        digest.update(f"\n{image.name}|{part}|{labels}".encode())
    return digest.hexdigest()


def _resolve_source(source: str) -> tuple[Iterable[Any], dict[str, str]]:
    """(images, manifest info) of a folder or a built-in probe set name, via cdissect_cli.probesets."""
    from cdissect_cli import probesets

    path = Path(source).expanduser()
    try:
        if path.is_dir():
            return probesets.resolve_probe_set(str(path.resolve())), {"source": str(path.resolve())}
        return probesets.resolve_probe_set(source), {"source": f"builtin:{source}"}
    except (ValueError, LookupError, OSError) as err:
        raise CliError(f"probe set {source!r}: {err}") from err


def register_source(store: ObjectStore, name: str, source: str, shard_size: int, on_bad_image: str,
                    max_pixels: int = DEFAULTS["max_image_pixels"]) -> tuple[common_pb2.DatasetManifest, bool]:
    """Register a folder or built-in probe set under `name`; (manifest, reused?)."""
    images, info = _resolve_source(source)
    images = list(images)
    fingerprint = _fingerprint(images, shard_size, on_bad_image, max_pixels)
    if store.exists(manifest_key(name)):
        existing = load_manifest(store, name)
        if existing.info.get(FINGERPRINT_INFO) == fingerprint:
            return existing, True
    info = {**info, FINGERPRINT_INFO: fingerprint, "on_bad_image": on_bad_image}
    try:
        manifest = register_dataset(store, name, images, shard_size=shard_size,
                                    on_bad_image=on_bad_image, info=info, max_pixels=max_pixels)
    except DatasetError as err:
        raise CliError(f"probe set {source!r}: {err}") from err
    return manifest, False


def ensure_dataset(store: ObjectStore, probe_set: str, shard_size: int, on_bad_image: str,
                   max_pixels: int = DEFAULTS["max_image_pixels"]) -> tuple[common_pb2.DatasetManifest, bool]:
    """The registered manifest for a job's probe set, registering it when needed; (manifest, reused?)."""
    path = Path(probe_set).expanduser()
    if path.is_dir():
        return register_source(store, folder_dataset_name(path), str(path), shard_size, on_bad_image, max_pixels)
    if path.exists():
        raise CliError(f"probe set {probe_set!r} is a file; give a folder of images (class subfolders allowed), "
                       f"a registered dataset name or a built-in probe set", exit_code=2)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*", probe_set) and store.exists(manifest_key(probe_set)):
        manifest = load_manifest(store, probe_set)
        source = manifest.info.get("source", "")
        if source.startswith("builtin:"):
            # Built-ins are re-checked cheaply (fingerprint) in case the files changed.
            return register_source(store, probe_set, source[len("builtin:"):], shard_size, on_bad_image, max_pixels)
        return manifest, True
    try:
        return register_source(store, probe_set, probe_set, shard_size, on_bad_image, max_pixels)
    except CliError as err:
        known = ", ".join(list_datasets(store)) or "(none)"
        raise CliError(f"{err}\nregistered datasets in {store.url}: {known}; register a folder with "
                       f"`cdissect datasets add NAME PATH` or pass --probe-set /path/to/folder", exit_code=2) from err


def dataset_summary(store: ObjectStore, name: str) -> dict[str, Any]:
    """Name, image and shard counts, digest and source of a registered dataset (for `datasets list`)."""
    try:
        manifest = load_manifest(store, name)
    except DatasetNotFoundError as err:
        raise CliError(str(err)) from err
    return {"name": manifest.name, "images": int(manifest.num_images), "shards": len(manifest.shards),
            "skipped": int(manifest.info.get("skipped_images", "0") or 0), "skipped_names": skipped_names(manifest),
            "source": manifest.info.get("source", ""), "digest": manifest.digest[:12]}


def skipped_names(manifest: common_pb2.DatasetManifest) -> list[str]:
    """The images the registration left out as unreadable (on_bad_image=skip), in dataset order."""
    return [n for n in manifest.info.get("skipped_names", "").split(",") if n]
