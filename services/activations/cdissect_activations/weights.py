"""Weight files on disk: the cache folder, fail-fast downloads, and streamed sha256 digests.

Every weight file the zoo reads (torchvision's, the Places365 ResNet-18, a user's checkpoint) goes
through here, so that all of them land in one cache folder, are identified by the sha256 of their
bytes (recorded with every artifact), and an offline machine gets an error that names the URL and
the exact path where the file can be placed by hand, within seconds instead of hanging.
"""
from __future__ import annotations

import hashlib
import os
import shutil
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


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks (weight files can be gigabytes).

    The digest is remembered in a sidecar `<file>.sha256` keyed by size and mtime, so that a
    service loading a 300 MB checkpoint on every start does not re-read it each time.
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
    try:
        sidecar.write_text(f"{stamp} {digest}\n")
    except OSError:
        pass  # read-only folder: the digest is still right, just not remembered
    return digest


def _timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds; set e.g. {TIMEOUT_ENV}=30") from None


def fetch(url: str, dest: str | os.PathLike[str], expected_sha256_prefix: str | None = None) -> Path:
    """Return `dest`, downloading `url` there first if the file is not present yet.

    A file already at `dest` is trusted as is (this is how a file copied by hand onto an offline
    machine is used). A fresh download goes to a temporary name in the same folder, is checked
    against `expected_sha256_prefix` when given (torchvision and OpenAI put one in their file
    names), and only then renamed into place, so a killed download never leaves a partial file.
    Raises WeightsUnavailableError naming the URL and `dest` when the download fails.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, _opener().open(url, timeout=_timeout()) as src:
                shutil.copyfileobj(src, out, _CHUNK)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise WeightsUnavailableError(
                f"could not download {url} ({exc}). This machine seems to be offline. "
                f"Download the file elsewhere and place it at {dest} "
                f"(the cache folder is set by ${CACHE_ENV}), then run again."
            ) from exc
        if expected_sha256_prefix:
            digest = sha256_file(tmp)
            if not digest.startswith(expected_sha256_prefix):
                raise WeightsUnavailableError(
                    f"downloaded {url} but its sha256 {digest} does not start with the expected "
                    f"{expected_sha256_prefix}; the download is corrupt. Retry, or place a good copy at {dest}."
                )
        os.replace(tmp, dest)
        return dest
    finally:
        if tmp.exists():
            tmp.unlink()
        stale = tmp.with_name(tmp.name + ".sha256")
        if stale.exists():
            stale.unlink()
