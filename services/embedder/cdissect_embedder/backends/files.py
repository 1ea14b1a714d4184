"""Weight files for the embedder: cache folder, streamed sha256, fail-fast downloads.

(The activations service has its own copy of these few lines: deployables never import each
other, and cdissect_common stays free of download logic.)
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

CACHE_ENV = "CDISSECT_CACHE_DIR"
TIMEOUT_ENV = "CDISSECT_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 20.0
_CHUNK = 1 << 20


class WeightsUnavailableError(RuntimeError):
    """A weight file is not in the cache and could not be downloaded (usually: no network)."""


def _opener() -> urllib.request.OpenerDirector:
    """A fresh opener per download, so proxy settings in the environment are read each time."""
    return urllib.request.build_opener()


def cache_dir() -> Path:
    """The weights cache folder: $CDISSECT_CACHE_DIR, else ~/.cache/cdissect/weights."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cdissect" / "weights"


def download_timeout() -> float:
    """Seconds to wait for a download to start: $CDISSECT_DOWNLOAD_TIMEOUT, default 20."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds; set e.g. {TIMEOUT_ENV}=30") from None


def sha256_file(path: str | os.PathLike[str], remember: bool = True) -> str:
    """sha256 hex digest of a file read in 1 MiB chunks.

    With remember=True the digest is kept in a sidecar `<file>.sha256` keyed by size and mtime, so
    a 300 MB checkpoint is not re-read on every service start.
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
    if not remember:
        return digest
    try:
        sidecar.write_text(f"{stamp} {digest}\n")
    except OSError:
        pass
    return digest


def sha256_dir(path: str | os.PathLike[str]) -> str:
    """sha256 over every file of a model folder (relative path and content digest, sorted).

    Nothing is written into the folder (it may be an installed package's data).
    """
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".sha256")):
        h.update(f"{f.relative_to(root).as_posix()} {sha256_file(f, remember=False)}\n".encode())
    return h.hexdigest()


def fetch(url: str, dest: str | os.PathLike[str], expected_sha256: str | None = None) -> Path:
    """Return `dest`, downloading `url` there first if absent; verify `expected_sha256` if given.

    A file already at `dest` is used as is after the digest check (a copy placed by hand on an
    offline machine). Downloads go to a temporary name and are renamed only when verified. An
    unreachable host raises WeightsUnavailableError naming the URL and `dest` within the timeout.
    """
    dest = Path(dest)
    if dest.is_file():
        if expected_sha256 and sha256_file(dest) != expected_sha256:
            raise WeightsUnavailableError(
                f"{dest} exists but its sha256 is not {expected_sha256}; the file is corrupt or a "
                f"different model. Delete it and download {url} again."
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, _opener().open(url, timeout=download_timeout()) as src:
                shutil.copyfileobj(src, out, _CHUNK)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise WeightsUnavailableError(
                f"could not download {url} ({exc}). This machine seems to be offline. Download the "
                f"file elsewhere and place it at {dest} (the cache folder is set by ${CACHE_ENV}), then run again."
            ) from exc
        if expected_sha256 and sha256_file(tmp) != expected_sha256:
            raise WeightsUnavailableError(f"downloaded {url} but its sha256 is not {expected_sha256}; retry the download")
        os.replace(tmp, dest)
        return dest
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".sha256")):
            if leftover.exists():
                leftover.unlink()


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds (a fail-fast probe)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
