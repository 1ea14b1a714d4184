"""cdissect_common.downloads: cache folders through the config loader, remembered digests,
verified fail-fast downloads that never leave a partial file."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdissect_common.config import ConfigError
from cdissect_common.downloads import (
    DownloadError, cache_dir, data_dir, download_timeout, fetch, host_reachable, sha256_dir, sha256_file,
)
from tests.conftest import free_port

PAYLOAD = b"weights " * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No settings from the developer's environment or config file."""
    for var in ("CDISSECT_CACHE_DIR", "CDISSECT_DATA_DIR", "CDISSECT_DOWNLOAD_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty-config.yaml"
    empty.write_text("{}\n")
    monkeypatch.setenv("CDISSECT_CONFIG", str(empty))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No way out to the network: every proxy is a closed loopback port."""
    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, dead)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


def _source(tmp_path: Path, data: bytes = PAYLOAD) -> str:
    src = tmp_path / "mirror" / "model.bin"
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    return src.as_uri()


def test_folders_and_timeout_default_then_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cache_dir() == Path.home() / ".cache" / "cdissect" / "weights"
    assert data_dir() == Path.home() / ".cache" / "cdissect" / "data"
    assert download_timeout() == 20.0
    monkeypatch.setenv("CDISSECT_CACHE_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("CDISSECT_DATA_DIR", "~/probe")
    monkeypatch.setenv("CDISSECT_DOWNLOAD_TIMEOUT", "3.5")
    assert (cache_dir(), data_dir(), download_timeout()) == (tmp_path / "w", Path.home() / "probe", 3.5)


def test_folders_from_config_file_below_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"cache_dir: {tmp_path / 'file-cache'}\ndata-dir: {tmp_path / 'file-data'}\n"
                   "download_timeout: 7\n")
    monkeypatch.setenv("CDISSECT_CONFIG", str(cfg))
    assert (cache_dir(), data_dir(), download_timeout()) == (tmp_path / "file-cache", tmp_path / "file-data", 7.0)
    monkeypatch.setenv("CDISSECT_CACHE_DIR", str(tmp_path / "env-cache"))
    assert cache_dir() == tmp_path / "env-cache"


@pytest.mark.parametrize("value", ["soon", "0", "-1"])
def test_bad_timeout_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CDISSECT_DOWNLOAD_TIMEOUT", value)
    with pytest.raises(ConfigError, match="CDISSECT_DOWNLOAD_TIMEOUT"):
        download_timeout()


def test_sha256_sidecar_is_reused_while_the_file_is_unchanged(tmp_path: Path) -> None:
    f = tmp_path / "ckpt.pt"
    f.write_bytes(PAYLOAD)
    assert sha256_file(f) == PAYLOAD_SHA
    sidecar = tmp_path / "ckpt.pt.sha256"
    stamp, digest = sidecar.read_text().split()
    assert digest == PAYLOAD_SHA
    sidecar.write_text(f"{stamp} {'ab' * 32}\n")  # a remembered digest is trusted, not recomputed
    assert sha256_file(f) == "ab" * 32


def test_sha256_sidecar_is_invalidated_when_the_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "ckpt.pt"
    f.write_bytes(PAYLOAD)
    sha256_file(f)
    st = f.stat()
    f.write_bytes(PAYLOAD[::-1])                              # same size, new content ...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # ... and a new mtime
    assert sha256_file(f) == hashlib.sha256(PAYLOAD[::-1]).hexdigest()
    f.write_bytes(b"short")                                   # new size
    assert sha256_file(f) == hashlib.sha256(b"short").hexdigest()


def test_sha256_without_remembering_and_of_a_folder(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "a.bin").write_bytes(b"a")
    (model / "sub" / "b.json").write_bytes(b"{}")
    assert sha256_file(model / "a.bin", remember=False) == hashlib.sha256(b"a").hexdigest()
    first = sha256_dir(model)
    assert sorted(p.name for p in model.rglob("*") if p.is_file()) == ["a.bin", "b.json"]  # nothing written
    (model / "a.bin.sha256").write_text("stale sidecars are ignored\n")
    assert sha256_dir(model) == first and len(first) == 64
    (model / "sub" / "b.json").write_bytes(b"{ }")
    assert sha256_dir(model) != first


def test_fetch_from_file_url_lands_in_place_with_its_digest(tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "clip" / "model.bin"
    assert fetch(_source(tmp_path), dest, expected_sha256=PAYLOAD_SHA,
                 expected_sha256_prefix=PAYLOAD_SHA[:8]) == dest
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "cache" / "clip" / "model.bin.sha256").read_text().split()[1] == PAYLOAD_SHA
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin", "model.bin.sha256"]


def test_fetch_uses_a_file_already_in_place_without_the_network(tmp_path: Path, offline: None) -> None:
    dest = tmp_path / "model.bin"
    dest.write_bytes(b"placed by hand")
    # a prefix only checks downloads (torchvision names); the file placed by hand is trusted
    assert fetch("https://example.invalid/model-deadbeef.bin", dest, expected_sha256_prefix="deadbeef") == dest
    with pytest.raises(DownloadError, match="exists but its sha256") as err:  # a full digest is checked
        fetch("https://example.invalid/model.bin", dest, expected_sha256=PAYLOAD_SHA)
    assert str(dest) in str(err.value) and dest.read_bytes() == b"placed by hand"


@pytest.mark.parametrize("kind", ["expected_sha256", "expected_sha256_prefix"])
def test_fetch_with_wrong_digest_leaves_no_file(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / "cache" / "model.bin"
    url = _source(tmp_path)
    with pytest.raises(DownloadError, match="corrupt") as err:
        fetch(url, dest, **{kind: "0" * (64 if kind == "expected_sha256" else 8)})
    assert url in str(err.value) and str(dest) in str(err.value)
    assert list(dest.parent.iterdir()) == []  # neither dest, nor a .part, nor a sidecar


def test_offline_fetch_fails_fast_naming_url_destination_and_variable(tmp_path: Path, offline: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDISSECT_CACHE_DIR", str(tmp_path / "weights"))
    dest = cache_dir() / "torchvision" / "resnet18-f37072fd.pth"
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        fetch(url, dest, expected_sha256_prefix="f37072fd")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert url in msg and str(dest) in msg and "$CDISSECT_CACHE_DIR" in msg
    assert (err.value.url, err.value.dest) == (url, dest)
    assert list(dest.parent.iterdir()) == []


def test_host_reachable_is_a_quick_probe() -> None:
    start = time.monotonic()
    assert not host_reachable("127.0.0.1", free_port(), timeout=2.0)
    assert time.monotonic() - start < 3


def test_downloads_module_does_not_import_torch() -> None:
    code = "import sys, cdissect_common.downloads; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
