"""Files fetched from the network: the cache folders, streamed sha256 digests, fail-fast downloads.

The one implementation used by every deployable (the activations zoo's weight files, the
embedder's CLIP checkpoints, the probe-set archives), so that:

- weight files land in one cache folder (``cache_dir()``: setting ``cache_dir``, env
  ``CDISSECT_CACHE_DIR``, default ``~/.cache/cdissect/weights``) and probe sets under one data
  folder (``data_dir()``: ``data_dir`` / ``CDISSECT_DATA_DIR``, default ``~/.cache/cdissect/data``),
  both read through ``cdissect_common.config`` like every other setting;
- files are identified by the sha256 of their bytes (``sha256_file``, remembered in a
  ``<file>.sha256`` sidecar keyed by size and mtime; ``sha256_dir`` for model folders);
- a download (``fetch``) goes to a temporary name next to its destination, is verified, and only
  then renamed into place, so no partial file is ever left; an offline machine gets a
  ``DownloadError`` naming the URL and the exact path where the file can be placed by hand within
  ``download_timeout()`` seconds (``CDISSECT_DOWNLOAD_TIMEOUT``, default 20) instead of hanging.

stdlib only (no torch).
"""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .config import DEFAULTS, ENV_VARS, ConfigError, load_settings

_CHUNK = 1 << 20

__all__ = ["DownloadError", "cache_dir", "data_dir", "download_timeout", "sha256_file", "sha256_dir", "fetch",
           "host_reachable"]


class DownloadError(RuntimeError):
    """A file is not on disk and could not be downloaded (usually: no network), or its digest is wrong.

    ``url``, ``dest`` and ``reason`` (the underlying error, or "sha256 mismatch") are kept so
    callers can phrase their own instructions.
    """

    url: str = ""
    dest: Path | None = None
    reason: object = None

    def __init__(self, message: str, url: str = "", dest: Path | None = None, reason: object = None) -> None:
        super().__init__(message)
        self.url, self.dest, self.reason = url, dest, reason


def _folder(key: str) -> Path:
    value = getattr(load_settings(), key) or DEFAULTS[key]
    return Path(value).expanduser()


def cache_dir() -> Path:
    """The weights cache folder: $CDISSECT_CACHE_DIR, else the config file's ``cache_dir``, else
    ~/.cache/cdissect/weights."""
    return _folder("cache_dir")


def data_dir() -> Path:
    """The probe-set root: $CDISSECT_DATA_DIR, else the config file's ``data_dir``, else
    ~/.cache/cdissect/data."""
    return _folder("data_dir")


def download_timeout() -> float:
    """Seconds a download may wait for the server: $CDISSECT_DOWNLOAD_TIMEOUT, config, default 20."""
    return float(load_settings().download_timeout)


def sha256_file(path: str | os.PathLike[str], remember: bool = True) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks (weight files can be gigabytes).

    A digest remembered in the sidecar ``<file>.sha256`` is reused while the file's size and mtime
    are unchanged, so a service loading a 300 MB checkpoint on every start does not re-read it.
    With ``remember=True`` a fresh digest is written there (silently skipped in read-only folders).
    """
    p = Path(path)
    st = p.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    sidecar = p.with_name(p.name + ".sha256")
    try:
        cached_stamp, cached_digest = sidecar.read_text().split()
        if cached_stamp == stamp and len(cached_digest) == 64:
            return cached_digest
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if remember:
        _remember(p, digest)
    return digest


def _remember(path: Path, digest: str) -> None:
    st = path.stat()
    try:
        path.with_name(path.name + ".sha256").write_text(f"{st.st_size}:{st.st_mtime_ns} {digest}\n")
    except OSError:
        pass  # read-only folder: the digest is still right, just not remembered


def sha256_dir(path: str | os.PathLike[str]) -> str:
    """sha256 over every file of a model folder (relative path and content digest, sorted).

    Sidecars are skipped and nothing is written into the folder (it may be an installed package's data).
    """
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".sha256")):
        h.update(f"{f.relative_to(root).as_posix()} {sha256_file(f, remember=False)}\n".encode())
    return h.hexdigest()


def _opener() -> urllib.request.OpenerDirector:
    """A fresh opener per download, so proxy settings in the environment are read each time."""
    return urllib.request.build_opener()


def _folder_note(dest: Path) -> str:
    """' (the cache folder is set by $CDISSECT_CACHE_DIR)' when dest lies in one of our folders."""
    for key, what in (("cache_dir", "cache folder"), ("data_dir", "data folder")):
        try:
            folder = _folder(key).resolve()
        except (ConfigError, OSError):
            continue
        if folder in dest.resolve().parents:
            return f" (the {what} {folder} is set by ${ENV_VARS[key]})"
    return ""


def fetch(url: str, dest: str | os.PathLike[str], expected_sha256: str | None = None,
          expected_sha256_prefix: str | None = None) -> Path:
    """Return ``dest``, downloading ``url`` there first if the file is not present yet.

    A file already at ``dest`` is used as is (this is how a copy placed by hand on an offline
    machine is used), after checking ``expected_sha256`` when given. ``expected_sha256_prefix``
    (torchvision and OpenAI put one in their file names) only checks fresh downloads. A download is
    hashed while it streams into a temporary file in ``dest``'s folder and renamed into place only
    when its digest matches, so a failed or killed download never leaves a partial file; the
    digest is remembered for ``sha256_file``. ``file://`` URLs work (mirrors, tests).

    Raises DownloadError naming ``url`` and ``dest`` when the download fails (within
    ``download_timeout()`` seconds when the host cannot be reached) or a digest does not match.
    """
    dest = Path(dest)
    if dest.is_file():
        if expected_sha256 and sha256_file(dest) != expected_sha256:
            raise DownloadError(
                f"{dest} exists but its sha256 is not {expected_sha256}; the file is corrupt or a different "
                f"file. Delete it and run again to download {url}, or place a good copy there.",
                url, dest, "sha256 mismatch")
        return dest
    timeout = download_timeout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, _opener().open(url, timeout=timeout) as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(
                f"could not download {url} ({reason}). This machine seems to be offline. Download the file "
                f"elsewhere and place it at {dest}{_folder_note(dest)}, then run again.",
                url, dest, reason) from exc
        digest = h.hexdigest()
        for expected, matches in ((expected_sha256, digest == expected_sha256),
                                  (expected_sha256_prefix, digest.startswith(expected_sha256_prefix or ""))):
            if expected and not matches:
                raise DownloadError(
                    f"downloaded {url} but its sha256 {digest} does not match the expected {expected}; the "
                    f"download is corrupt. Retry, or place a good copy at {dest}.", url, dest, "sha256 mismatch")
        os.replace(tmp, dest)
        _remember(dest, digest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:port opens within ``timeout`` seconds (a fail-fast probe)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
