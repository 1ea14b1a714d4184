"""Embedding backends: OpenAI-format files load through clip.load, outputs are normalised and
identified, templates average as specified, offline names fail fast with a useful message."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import clip
import pytest
import torch
from PIL import Image

from cdissect_common.downloads import DownloadError
from cdissect_embedder.backends import (
    TextOnlyModelError, available_models, load_backend, register_backend,
)
from cdissect_embedder.backends import openai_clip, registry


@pytest.fixture(scope="module")
def tiny(tiny_clip_checkpoint: Path):
    return load_backend(str(tiny_clip_checkpoint), device="cpu")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_torchscript_checkpoint_loads_and_is_identified(tiny, tiny_clip_checkpoint: Path) -> None:
    assert tiny.model_id == f"openai-clip:file:{tiny_clip_checkpoint.name}"
    assert tiny.checkpoint_sha256 == hashlib.sha256(tiny_clip_checkpoint.read_bytes()).hexdigest()
    assert (tiny.dtype, tiny.device_type, tiny.embed_dim) == ("float32", "cpu", 32)
    assert {p.dtype for p in tiny.model.parameters()} == {torch.float32}  # clip.load casts to fp32 on CPU
    assert tiny.describe()["checkpoint_sha256"] == tiny.checkpoint_sha256
    assert "Resize(size=32" in tiny.preprocess_id and "0x" not in tiny.preprocess_id


def test_image_embeddings_are_normalised_float32(tiny) -> None:
    images = torch.stack([tiny.preprocess(Image.new("RGB", (50, 40), (200, 20, 20))),
                          tiny.preprocess(Image.new("L", (30, 60), 90))])
    assert images.shape == (2, 3, 32, 32)
    out = tiny.encode_images(images)
    assert out.shape == (2, 32) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    direct = _normalise(tiny.model.encode_image(images).float())
    assert torch.allclose(out, direct, atol=1e-5)


def test_raw_texts_by_default_and_batches_agree(tiny) -> None:
    words = ["red", "blue square", "a dog", "tree"]
    out = tiny.encode_texts(words)
    direct = _normalise(tiny.model.encode_text(clip.tokenize(words)).float())
    assert torch.allclose(out, direct, atol=1e-5)
    tiny.text_batch_size = 3
    try:
        assert torch.allclose(tiny.encode_texts(words), out, atol=1e-6)
    finally:
        tiny.text_batch_size = 256


def test_templates_are_averaged_after_normalising(tiny) -> None:
    words = ["red", "circle"]
    templates = ["a photo of a {}.", "{} texture"]
    per_template = [tiny.encode_texts([t.replace("{}", w) for w in words]) for t in templates]
    expected = _normalise(per_template[0] + per_template[1])
    out = tiny.encode_texts(words, templates=templates)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, tiny.encode_texts(words), atol=1e-3)
    with pytest.raises(ValueError, match="exactly once"):
        tiny.encode_texts(words, templates=["no placeholder"])


def test_plain_state_dict_file_loads_like_the_torchscript_one(tiny, tmp_path: Path) -> None:
    path = tmp_path / "state_dict.pt"
    torch.save(tiny.model.state_dict(), path)
    other = load_backend(str(path), device="cpu")
    assert other.model_id == "openai-clip:file:state_dict.pt"
    assert other.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.allclose(other.encode_texts(["green"]), tiny.encode_texts(["green"]), atol=1e-5)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"payload": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match="could execute code"):
        load_backend(str(path), device="cpu")
    assert not marker.exists()


def test_named_model_offline_fails_fast_naming_url_and_path(offline_weights_cache: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        load_backend("ViT-B/16", device="cpu")
    assert time.monotonic() - start < 15
    assert openai_clip.model_url("ViT-B/16") in str(err.value)
    assert str(offline_weights_cache / "clip" / "ViT-B-16.pt") in str(err.value)


def test_unknown_names_and_options_are_explained(tiny_clip_checkpoint: Path) -> None:
    with pytest.raises(LookupError, match="ViT-B/16"):
        load_backend("ViT-B/61", device="cpu")
    with pytest.raises(FileNotFoundError):
        load_backend("/no/such/clip.pt", device="cpu")
    with pytest.raises(ValueError, match="fp32"):
        load_backend(str(tiny_clip_checkpoint), device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="no model"):
        load_backend("open_clip:", device="cpu")


@pytest.mark.slow
def test_registry_lists_and_dispatches(tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the test prefix goes away after
    names = available_models()
    assert "ViT-B/16" in names and "sentence:all-MiniLM-L6-v2" in names
    assert any(n.startswith("open_clip:") for n in names)
    seen = []

    def loader(rest: str, device, precision):
        seen.append(rest)
        return openai_clip.load(rest, device, precision)

    register_backend("test-prefix", loader)
    backend = load_backend(f"test-prefix:{tiny_clip_checkpoint}", device="cpu")
    assert seen == [str(tiny_clip_checkpoint)] and backend.embed_dim == 32
    with pytest.raises(ValueError, match="without ':'"):
        register_backend("bad:prefix", loader)


TINY_OPEN_CLIP = {"embed_dim": 32,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_open_clip_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny architecture registered through open_clip's own config mechanism."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_cfg")
    (folder / "cdissect-tiny.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(folder)
    return "cdissect-tiny"


def test_open_clip_random_init_is_seeded_and_checkpoint_roundtrips(tiny_open_clip_arch: str, tmp_path: Path) -> None:
    a = load_backend(f"open_clip:{tiny_open_clip_arch}", device="cpu")
    b = load_backend(f"open_clip:{tiny_open_clip_arch}", device="cpu")
    assert a.model_id == f"open_clip:{tiny_open_clip_arch}:random-init:0" and a.checkpoint_sha256 == "random-init:0"
    texts = a.encode_texts(["red", "blue"])
    assert texts.shape == (2, 32) and torch.allclose(texts.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(texts, b.encode_texts(["red", "blue"]))
    image = a.preprocess(Image.new("RGB", (48, 40), (10, 200, 10))).unsqueeze(0)
    assert a.encode_images(image).shape == (1, 32)
    path = tmp_path / "open_clip_weights.pt"
    torch.save(a.model.state_dict(), path)
    c = load_backend(f"open_clip:{tiny_open_clip_arch}:{path}", device="cpu")
    assert c.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.allclose(c.encode_images(image), a.encode_images(image), atol=1e-5)


def test_open_clip_unknown_arch_lists_close_names() -> None:
    with pytest.raises(LookupError, match="ViT-B-32"):
        load_backend("open_clip:ViT-B-33", device="cpu")


@pytest.mark.slow
def test_sentence_backend_related_words_are_closer() -> None:
    backend = load_backend("sentence:all-MiniLM-L6-v2", device="cpu")
    assert backend.model_id == "sentence:all-MiniLM-L6-v2" and len(backend.checkpoint_sha256) == 64
    emb = backend.encode_texts(["dog", "puppy", "spreadsheet software"])
    assert emb.shape == (3, 384) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    with pytest.raises(TextOnlyModelError, match="text-only"):
        backend.encode_images(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TextOnlyModelError):
        backend.preprocess(Image.new("RGB", (8, 8)))


def test_sentence_model_missing_offline_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError, match="cdissect-no-such-sentence-model"):
        load_backend("sentence:cdissect-no-such-sentence-model", device="cpu")
    assert time.monotonic() - start < 30
