"""The services' prefetch pipeline and inline batching, in process (servicers without a server).

- the embedder and the activations service give exactly the arrays of the serial path (decode,
  preprocess, stack, forward, one batch after the other);
- a crashing prefetch worker fails the shard with INTERNAL naming the image, and nothing is
  written to the store;
- concurrent inline EmbedImages/EmbedTexts calls are batched, each gets its own vectors (equal
  to embedding it alone), and a bad call fails alone.
"""
from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from cdissect.v1 import activations_pb2, embedder_pb2
from cdissect_activations.hooks import LayerRecorder
from cdissect_activations.service import ActivationsServicer
from cdissect_common.config import load_settings
from cdissect_common.errors import ServiceError
from cdissect_common.images import decode_image
from cdissect_common.manifest import ImageSource, register_dataset
from cdissect_common.server import ServiceRuntime
from cdissect_embedder.service import EmbedderServicer

pytestmark = pytest.mark.slow
BATCH = 4


def _jpegs(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """JPEGs of varied sizes and modes (grey, RGB), so decoding and resizing both do real work."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(40, 120, 2))
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(pixels, "RGB")
        if i % 5 == 3:
            img = img.convert("L")
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        out.append((f"img_{i:03d}.jpg", buf.getvalue()))
    return out


def _runtime(service: str, tmp_path: Path, **env: str) -> ServiceRuntime:
    settings = load_settings(service, env={"CDISSECT_STORE": f"file://{tmp_path}/store", "CDISSECT_DEVICE": "cpu",
                                           "CDISSECT_BATCH_SIZE": str(BATCH), "CDISSECT_PREFETCH_WORKERS": "3",
                                           **env}, config_file=None)
    return ServiceRuntime(service, settings)


def _serial_batches(items: list[tuple[str, bytes]], preprocess) -> list[torch.Tensor]:
    """Today's serial path: batch_size items at a time, the kept images stacked."""
    return [torch.stack([preprocess(decode_image(n, d)) for n, d in items[start:start + BATCH]])
            for start in range(0, len(items), BATCH)]


def test_embedder_equals_the_serial_path(tmp_path: Path, tiny_clip_checkpoint: Path) -> None:
    servicer = EmbedderServicer(_runtime("embedder", tmp_path, CDISSECT_MODEL_DIRS=str(tiny_clip_checkpoint.parent)))
    backend = servicer.backend(str(tiny_clip_checkpoint), "float32")
    items = _jpegs(19)
    emb = servicer._embed_images(backend, items, where="shard 0")
    serial = np.concatenate([backend.encode_images(b).numpy() for b in _serial_batches(items, backend.preprocess)])
    assert emb.dtype == np.float32 and emb.shape == (19, backend.embed_dim)
    assert np.array_equal(emb, serial)


def _shard(runtime: ServiceRuntime, items: list[tuple[str, bytes]]):
    manifest = register_dataset(runtime.store, "probe", [ImageSource(name=n, data=d) for n, d in items],
                                shard_size=len(items))
    return manifest.shards[0]


def test_activations_equal_the_serial_path(tmp_path: Path) -> None:
    servicer = ActivationsServicer(_runtime("activations", tmp_path))
    items = _jpegs(11)
    shard = _shard(servicer.runtime, items)
    target = servicer.target("resnet18", "none")
    computed = servicer._compute(target, ["layer1", "fc"], "avg", "cls", shard, {})
    recorder = LayerRecorder(target.model, ["layer1", "fc"], "avg", "cls", model_name=target.name)
    serial = [recorder.record(b) for b in _serial_batches(items, target.preprocess)]
    for layer in ("layer1", "fc"):
        expected = np.concatenate([part[layer].float().numpy() for part in serial])
        assert np.array_equal(computed[layer], expected), layer


def test_a_worker_crash_fails_the_shard_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    servicer = ActivationsServicer(_runtime("activations", tmp_path))
    items = _jpegs(10)
    shard = _shard(servicer.runtime, items)
    target = servicer.target("resnet18", "none")
    original = target.preprocess

    def crashing(img: Image.Image) -> torch.Tensor:
        if img.size == Image.open(io.BytesIO(items[7][1])).size:
            raise MemoryError("cannot allocate 600 kB")
        return original(img)

    monkeypatch.setattr(target, "preprocess", crashing)
    before = set(servicer.runtime.store.list())
    request = activations_pb2.ComputeShardActivationsRequest(model="resnet18", weights="none", layers=["layer1"],
                                                             shard=shard)
    with pytest.raises(ServiceError) as info:
        servicer.ComputeShardActivations(request, None)
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert f"preparing image {items[7][0]!r} of shard 0 crashed in a prefetch worker" in info.value.message
    assert "MemoryError: cannot allocate 600 kB" in info.value.message
    assert set(servicer.runtime.store.list()) == before  # no artifact, no half-written object


def _inline(servicer: EmbedderServicer, calls: list, method: str) -> list:
    barrier = threading.Barrier(len(calls))

    def one(request):
        barrier.wait()
        try:
            return getattr(servicer, method)(request, None)
        except ServiceError as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def test_inline_calls_are_batched_and_errors_stay_apart(tmp_path: Path, tiny_clip_checkpoint: Path) -> None:
    servicer = EmbedderServicer(_runtime("embedder", tmp_path, CDISSECT_INLINE_BATCH_WAIT_SECONDS="0.2",
                                         CDISSECT_INLINE_BATCH_MAX="16",
                                         CDISSECT_MODEL_DIRS=str(tiny_clip_checkpoint.parent)))
    model = str(tiny_clip_checkpoint)
    backend = servicer.backend(model)
    images = _jpegs(12, seed=3)
    calls = [embedder_pb2.EmbedImagesRequest(model=model, images=[data]) for _, data in images]
    calls[5] = embedder_pb2.EmbedImagesRequest(model=model, images=[images[5][1], b"broken"])
    results = _inline(servicer, calls, "EmbedImages")
    assert servicer.image_batcher.batches < len(calls) - 1  # batched, not one forward per call
    for i, result in enumerate(results):
        if i == 5:
            assert isinstance(result, ServiceError) and result.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "'images[1]'" in result.message
            continue
        alone = backend.encode_images(backend.preprocess(Image.open(io.BytesIO(images[i][1])).convert("RGB"))[None])
        got = np.array([v.values for v in result.vectors], dtype=np.float32)
        np.testing.assert_allclose(got, alone.numpy(), rtol=0, atol=1e-5)

    texts = ["red", "a green circle", "blue", "square", "dark", "light"]
    text_calls = [embedder_pb2.EmbedTextsRequest(model=model, texts=[t]) for t in texts]
    text_calls.append(embedder_pb2.EmbedTextsRequest(model=model, texts=["x"], prompt_templates=["no slot"]))
    text_calls.append(embedder_pb2.EmbedTextsRequest(model=model, texts=["red", "blue"],
                                                     prompt_templates=["a photo of {}"]))
    results = _inline(servicer, text_calls, "EmbedTexts")
    assert isinstance(results[6], ServiceError) and "must contain '{}'" in results[6].message
    for text, result in zip(texts, results):
        got = np.array([v.values for v in result.vectors], dtype=np.float32)
        np.testing.assert_allclose(got, backend.encode_texts([text]).numpy(), rtol=0, atol=1e-5)
    templated = np.array([v.values for v in results[7].vectors], dtype=np.float32)
    np.testing.assert_allclose(templated, backend.encode_texts(["red", "blue"], ["a photo of {}"]).numpy(),
                               rtol=0, atol=1e-5)
