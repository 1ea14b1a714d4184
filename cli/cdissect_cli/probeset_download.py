"""Downloading and unpacking the probe sets that have public addresses (broden, cifar100).

``download_probe_set(name, root)`` fetches the archive through ``cdissect_common.downloads.fetch``
(fails fast with a message saying where to put the files when there is no network), checks it,
unpacks it into the layout ``cdissect_cli.probesets.resolve_probe_set`` reads, and deletes the
archive. Extraction refuses members that would land outside ``root``. torch-free; CLI only.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
from pathlib import Path

from cdissect_common.downloads import DownloadError, data_dir, fetch

from .probesets import BRODEN_URL, CIFAR100_URL, ProbeSetDownloadError, ProbeSetError

CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"


def download_probe_set(name: str, root: str | Path | None = None, url: str | None = None) -> Path:
    """Download and unpack ``broden`` or ``cifar100`` (both splits) under ``root``; returns root.

    Does nothing if the set is already there. ``url`` overrides the public address (a mirror, or
    a ``file://`` archive). Fails fast (``CDISSECT_DOWNLOAD_TIMEOUT``) with ``ProbeSetDownloadError``
    when the host cannot be reached; no partial archive is left behind.
    """
    base = Path(root).expanduser() if root is not None else data_dir()
    if name == "broden":
        if (base / "broden1_224" / "index.csv").is_file():
            return base
        archive = _fetch(name, url or BRODEN_URL, base / "broden1_224.zip", base, "broden1_224/images/<source>/*.jpg")
        try:
            _unzip_broden(archive, base)
        finally:
            archive.unlink(missing_ok=True)
        return base
    if name in ("cifar100", "cifar100_train", "cifar100_val"):
        if (base / "cifar-100-python" / "meta").is_file():
            return base
        archive = _fetch("cifar100", url or CIFAR100_URL, base / "cifar-100-python.tar.gz", base,
                         "cifar-100-python/{train,test,meta}")
        try:
            if url is None and _md5(archive) != CIFAR100_MD5:
                raise ProbeSetDownloadError(f"{archive} does not have the published MD5 {CIFAR100_MD5}; "
                                            "delete it and download again.")
            _untar(archive, base)
        finally:
            archive.unlink(missing_ok=True)
        return base
    raise ProbeSetError(f"probe set {name!r} has no download: only broden and cifar100 are public. "
                        f"Place the files under {base} as resolve_probe_set documents "
                        "(imagenet_val/<wnid>/*.JPEG, places365/val_256 + places365_val.txt).")


def _fetch(name: str, url: str, dest: Path, base: Path, layout: str) -> Path:
    """downloads.fetch, with the probe set's own instructions when it fails."""
    try:
        return fetch(url, dest)
    except DownloadError as exc:
        raise ProbeSetDownloadError(
            f"could not download probe set {name!r} from {url}: {exc.reason}. Without network access, "
            f"fetch that file elsewhere and unpack it under {base} so that {base}/{layout} exists "
            f"(or pass url= a mirror or a file:// path; the default root is set by $CDISSECT_DATA_DIR).",
            url, dest, exc.reason) from exc


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_target(base: Path, member: str) -> Path:
    target = (base / member).resolve()
    if not str(target).startswith(str(base.resolve()) + os.sep) and target != base.resolve():
        raise ProbeSetDownloadError(f"archive member {member!r} would be written outside {base}; refusing it.")
    return target


def _unzip_broden(archive: Path, base: Path) -> None:
    """Unzip, then drop what dlbroden.sh drops: the segmentation PNGs and top-level *.txt files."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                _safe_target(base, member)
            zf.extractall(base)
    except zipfile.BadZipFile as exc:
        raise ProbeSetDownloadError(f"{archive} is not a valid zip ({exc}); delete it and download again.") from exc
    images = base / "broden1_224" / "images"
    if images.is_dir():
        for source in images.iterdir():
            if source.is_dir():
                for png in source.rglob("*.png"):
                    png.unlink()
    for txt in (base / "broden1_224").glob("*.txt"):
        txt.unlink()


def _untar(archive: Path, base: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tf:
            members = tf.getmembers()
            for m in members:
                _safe_target(base, m.name)
                if not (m.isfile() or m.isdir()):
                    raise ProbeSetDownloadError(f"archive member {m.name!r} is not a file or folder; refusing it.")
            tf.extractall(base, members=members, filter="data")
    except tarfile.TarError as exc:
        raise ProbeSetDownloadError(f"{archive} is not a valid tar.gz ({exc}); delete it and download again.") from exc


__all__ = ["download_probe_set", "CIFAR100_MD5"]
