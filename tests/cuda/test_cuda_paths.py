"""The GPU paths on a real CUDA device; every test here is skipped on a machine without one.

Run by ``make test`` wherever CUDA is available, and by ``bench/gpu_check.sh`` on the device
machine (``-m cuda``). Nothing is faked: each test runs the same code as the services on
``cuda`` and compares it with the CPU float32 path within the tolerance of the GPU precision:

- CLIP in fp16 on CUDA, as the reference loads it (``clip.load`` on cuda), against fp32 on CPU;
- the embedder's prefetch pipeline on CUDA (pinned host batches, non-blocking copies on a side
  stream), its inline batching, and the per-device default batch size;
- the activations service on CUDA in float32 and under bf16 autocast;
- the labeler's streaming soft-WPMI on CUDA against the CPU.
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from cdissect.v1 import embedder_pb2
from cdissect_common.config import load_settings
from cdissect_common.devices import DEFAULT_BATCH_SIZES, BatchCollator
from cdissect_common.server import ServiceRuntime
from tests.conftest import make_probe_images

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _embedder(tmp_path: Path, device: str, **env: str):
    from cdissect_embedder.service import EmbedderServicer

    settings = load_settings("embedder", env={"CDISSECT_STORE": f"file://{tmp_path}/store-{device}",
                                              "CDISSECT_DEVICE": device, **env}, config_file=None)
    return EmbedderServicer(ServiceRuntime("embedder", settings))


def _items(n: int, size: int = 64) -> list[tuple[str, bytes]]:
    return [(name, data) for name, data, _ in make_probe_images(n, size=size)]


def test_collator_pins_and_copies_without_blocking() -> None:
    tensors = [torch.randn(3, 8, 8) for _ in range(5)]
    batch = BatchCollator("cuda")(tensors)
    assert batch.host.is_pinned()
    on_device = batch.tensor()
    assert on_device.device.type == "cuda"
    assert torch.equal(on_device.cpu(), torch.stack(tensors))


def test_default_batch_size_is_the_gpus(tmp_path: Path) -> None:
    assert _embedder(tmp_path, "cuda").batch_size == DEFAULT_BATCH_SIZES["cuda"]
    assert _embedder(tmp_path, "cpu").batch_size == DEFAULT_BATCH_SIZES["cpu"]


def test_clip_fp16_on_cuda_as_the_reference(tmp_path: Path, tiny_clip_checkpoint: Path) -> None:
    gpu, cpu = _embedder(tmp_path, "cuda"), _embedder(tmp_path, "cpu")
    model = str(tiny_clip_checkpoint)
    gpu_backend = gpu.backend(model)          # no precision given: fp16 on CUDA, like clip.load
    assert gpu_backend.dtype == "float16"
    assert next(gpu_backend.model.parameters()).dtype == torch.float16
    cpu_backend = cpu.backend(model, "float32")
    items = _items(40)
    emb_gpu = gpu._embed_images(gpu_backend, items)
    emb_cpu = cpu._embed_images(cpu_backend, items)
    assert emb_gpu.dtype == np.float32 and emb_gpu.shape == emb_cpu.shape
    assert _cosines(emb_gpu, emb_cpu).min() > 0.999
    words = ["red", "green circle", "blue square"]
    text_gpu = gpu_backend.encode_texts(words).numpy()
    assert _cosines(text_gpu, cpu_backend.encode_texts(words).numpy()).min() > 0.999


def test_embedder_prefetch_on_cuda_equals_one_batch_at_a_time(tmp_path: Path, tiny_clip_checkpoint: Path) -> None:
    servicer = _embedder(tmp_path, "cuda", CDISSECT_BATCH_SIZE="8", CDISSECT_PREFETCH_WORKERS="4")
    backend = servicer.backend(str(tiny_clip_checkpoint), "float32")
    items = _items(30)
    emb = servicer._embed_images(backend, items)
    from cdissect_common.images import decode_image

    serial = [backend.encode_images(torch.stack([backend.preprocess(decode_image(n, d))
                                                 for n, d in items[start:start + 8]])).numpy()
              for start in range(0, len(items), 8)]
    np.testing.assert_allclose(emb, np.concatenate(serial), rtol=0, atol=1e-5)


def test_inline_batching_on_cuda(tmp_path: Path, tiny_clip_checkpoint: Path) -> None:
    servicer = _embedder(tmp_path, "cuda", CDISSECT_INLINE_BATCH_WAIT_SECONDS="0.1")
    model = str(tiny_clip_checkpoint)
    backend = servicer.backend(model)
    items = _items(16)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda item: servicer.EmbedImages(
            embedder_pb2.EmbedImagesRequest(model=model, images=[item[1]]), None), items))
    alone = servicer._embed_images(backend, items)
    got = np.array([[v.values for v in r.vectors][0] for r in results], dtype=np.float32)
    assert _cosines(got, alone).min() > 0.999
    assert servicer.image_batcher.batches < len(items)


def test_activations_on_cuda_float32_and_bf16(tmp_path: Path) -> None:
    from tests.unit.test_activations_precision import _servicer, compute

    cpu32 = compute(_servicer(tmp_path / "cpu"), "float32")[1]
    gpu = _servicer(tmp_path / "gpu", "cuda")
    gpu32 = compute(gpu, "float32")[1]
    gpu16 = compute(gpu, "bfloat16")[1]
    for layer in cpu32:
        ref = cpu32[layer]
        assert np.linalg.norm(gpu32[layer] - ref) / np.linalg.norm(ref) < 1e-2, layer  # cuDNN convolutions in tf32
        assert np.linalg.norm(gpu16[layer] - ref) / np.linalg.norm(ref) < 3e-2, layer


def test_streaming_soft_wpmi_on_cuda_equals_cpu() -> None:
    from cdissect_labeler.streaming import StreamingLabeler

    rng = np.random.default_rng(0)
    n, c, d, k = 3000, 2000, 64, 300
    common = rng.standard_normal(d)
    images = (common + rng.standard_normal((n, d))).astype(np.float32)
    texts = (common + rng.standard_normal((c, d))).astype(np.float32)
    acts = np.maximum(images @ rng.standard_normal((d, k)).astype(np.float32) / 8, 0).astype(np.float32)
    out = {}
    for device in ("cpu", "cuda"):
        labeler = StreamingLabeler("soft_wpmi", {}, texts, device=device, num_images=n)
        for start in range(0, n, 1000):
            labeler.add_shard(images[start:start + 1000], acts[start:start + 1000])
        out[device] = labeler.finish(top_concepts=3, top_images=5)
    agree = (out["cpu"].concept_ids[:, 0] == out["cuda"].concept_ids[:, 0]).mean()
    assert agree > 0.99  # only near-ties may differ
    assert np.abs(out["cpu"].scores - out["cuda"].scores).max() < 1e-2
    assert np.array_equal(out["cpu"].top_images, out["cuda"].top_images)
