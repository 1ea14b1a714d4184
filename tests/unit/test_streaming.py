"""StreamingLabeler equals the dense functions whatever the shard and chunk sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cdissect_labeler import similarity as sim
from cdissect_labeler.streaming import StreamingLabeler, shard_top_candidates, top_concepts

TOLERANCE = {"soft_wpmi": 2e-4, "wpmi": 5e-5, "cos_similarity": 2e-6, "cos_similarity_cubed": 2e-6,
             "rank_reorder": 2e-5}
N, C, D, K = 160, 40, 16, 10


def make_world(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CLIP-like embeddings (a shared direction keeps P positive, as real CLIP cosines are) and
    activations that follow some concepts, with one dead unit, one constant unit and tied values."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(D)
    I = (common + 0.8 * rng.standard_normal((N, D))).astype(np.float32)
    T = (common + 0.8 * rng.standard_normal((C, D))).astype(np.float32)
    In = I / np.linalg.norm(I, axis=1, keepdims=True)
    Tn = T / np.linalg.norm(T, axis=1, keepdims=True)
    P = In @ Tn.T
    A = np.maximum(P[:, rng.choice(C, K)] * 5 + 0.3 * rng.standard_normal((N, K)) - 3.5, 0).astype(np.float32)
    A[:, 2] = 0.0                                  # dead ReLU channel: every value tied
    A[:, 5] = 1.25                                 # constant unit
    A[::3, 7] = np.round(A[::3, 7], 1)             # many ties inside the ranking
    return I, T, A


def dense(function: str, I: np.ndarray, T: np.ndarray, A: np.ndarray, precision: str = "float32",
          **params) -> np.ndarray:
    """The dense reference: P = normalize(I)·normalize(T)ᵀ in float32, then the dense function."""
    It, Tt = torch.from_numpy(I), torch.from_numpy(T)
    if precision == "float16":
        It, Tt = It.half().float(), Tt.half().float()
    It = It / It.norm(dim=1, keepdim=True)
    Tt = Tt / Tt.norm(dim=1, keepdim=True)
    return sim.compute(function, (It @ Tt.T).numpy(), A, **params)


def stream(function: str, I, T, A, shard: int, params: dict | None = None, **kwargs):
    labeler = StreamingLabeler(function, params or {}, T, **kwargs)
    for s in range(0, len(A), shard):
        labeler.add_shard(I[s:s + shard], A[s:s + shard])
    return labeler.finish(top_concepts=5, top_images=10)


def check_equal(labels, ref: np.ndarray, function: str) -> None:
    ref_ids = np.argsort(-ref, axis=1, kind="stable")[:, :5]
    assert np.array_equal(labels.concept_ids[:, 0], ref.argmax(axis=1))
    assert np.array_equal(labels.concept_ids, ref_ids)
    assert np.abs(labels.scores - np.take_along_axis(ref, ref_ids, axis=1)).max() <= TOLERANCE[function]
    assert np.isfinite(labels.scores).all()


@pytest.mark.parametrize("function", sim.FUNCTIONS)
@pytest.mark.parametrize("shard,neuron_chunk,image_chunk,concept_tile", [(1, 3, 7, 7), (7, 256, None, 1024),
                                                                        (N, 1, 50, 13)])
def test_streaming_equals_dense(function: str, shard: int, neuron_chunk: int, image_chunk: int | None,
                                concept_tile: int) -> None:
    I, T, A = make_world()
    labels = stream(function, I, T, A, shard, neuron_chunk=neuron_chunk, image_chunk=image_chunk,
                    concept_tile=concept_tile)
    check_equal(labels, dense(function, I, T, A), function)
    assert list(np.flatnonzero(labels.dead)) == [2, 5]


@pytest.mark.parametrize("function", ["rank_reorder", "cos_similarity"])
def test_announced_size_keeps_only_running_tops(function: str) -> None:
    I, T, A = make_world(1)
    labels = stream(function, I, T, A, 13, num_images=N)
    check_equal(labels, dense(function, I, T, A), function)


def test_prior_exact_whatever_the_neuron_chunk() -> None:
    I, T, A = make_world(2)
    one = stream("soft_wpmi", I, T, A, 40, neuron_chunk=1)
    full = stream("soft_wpmi", I, T, A, 40, neuron_chunk=K)
    assert np.array_equal(one.concept_ids, full.concept_ids)
    assert np.abs(one.scores - full.scores).max() < 1e-6


@pytest.mark.parametrize("params", [{"top_k": 60, "lam": 0.6}, {"min_prob": 1e-40}])
def test_extreme_parameters_stay_exact(params: dict) -> None:
    """top_k=60: float32 products are flushed every few ranks; min_prob=1e-40: c_r is too large
    for float32 products at all, so logs are summed rank by rank."""
    I, T, A = make_world(3)
    labels = stream("wpmi", I, T, A, 16, params, concept_tile=9)
    check_equal(labels, dense("wpmi", I, T, A, **params), "wpmi")


def test_parameters_giving_log_of_zero_are_refused() -> None:
    _, T, _ = make_world()
    with pytest.raises(ValueError, match=r"min_prob of soft_wpmi must be a number in \(0, 1\]"):
        StreamingLabeler("soft_wpmi", {"min_prob": 0.0, "p_start": 1.0}, T)


def test_float16_precision_mimics_reference_gpu_features() -> None:
    I, T, A = make_world(4)
    labels = stream("soft_wpmi", I, T, A, 50, precision="float16")
    check_equal(labels, dense("soft_wpmi", I, T, A, precision="float16"), "soft_wpmi")


def test_top_images_global_indices_with_lower_index_on_ties() -> None:
    I, T, A = make_world(5)
    labels = stream("soft_wpmi", I, T, A, 9)
    expected = np.argsort(-A, axis=0, kind="stable")[:10].T
    assert np.array_equal(labels.top_images, expected)
    assert labels.top_images[2].tolist() == list(range(10))             # dead unit: first images


def test_shard_candidates_equal_a_stable_sort_with_many_ties() -> None:
    rng = np.random.default_rng(8)
    values = torch.from_numpy(rng.integers(0, 4, size=(50, 40)).astype(np.float32))   # heavy ties
    values[3] = 0.0
    vals, idx = shard_top_candidates(values, 6, offset=100)
    ref_vals, ref_idx = torch.sort(values, dim=1, descending=True, stable=True)
    assert torch.equal(vals, ref_vals[:, :6]) and torch.equal(idx, ref_idx[:, :6] + 100)
    assert idx[3].tolist() == list(range(100, 106))


def test_top_concepts_breaks_ties_by_lower_concept_index() -> None:
    S = torch.tensor([[1.0, 5.0, 5.0, 2.0, 5.0, 5.0]])
    ids, vals = top_concepts(S, 3)
    assert ids.tolist() == [[1, 2, 4]] and vals.tolist() == [[5.0, 5.0, 5.0]]


def test_bad_input_is_refused_with_the_fix() -> None:
    I, T, A = make_world()
    labeler = StreamingLabeler("soft_wpmi", {}, T, num_images=N)
    with pytest.raises(ValueError, match="same CLIP model"):
        labeler.add_shard(I[:, :8], A)
    with pytest.raises(ValueError, match="same images in the same order"):
        labeler.add_shard(I[:5], A[:4])
    labeler.add_shard(I[:50], A[:50])
    with pytest.raises(ValueError, match="one layer per StreamingLabeler"):
        labeler.add_shard(I[50:60], A[50:60, :3])
    with pytest.raises(ValueError, match="num_images=160 was announced but 50"):
        labeler.finish()
    with pytest.raises(ValueError, match="call add_shard before finish"):
        StreamingLabeler("wpmi", {}, T).finish()
    with pytest.raises(ValueError, match="precision must be one of"):
        StreamingLabeler("wpmi", {}, T, precision="bfloat16")
    small = StreamingLabeler("wpmi", {}, T, max_top_images=10)
    small.add_shard(I, A)
    with pytest.raises(ValueError, match="max_top_images≥40"):
        small.finish(top_images=40)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_path_equals_cpu() -> None:
    I, T, A = make_world(6)
    cpu = stream("soft_wpmi", I, T, A, 32)
    gpu = stream("soft_wpmi", I, T, A, 32, device="cuda")
    assert np.array_equal(cpu.concept_ids[:, 0], gpu.concept_ids[:, 0])
    assert np.abs(cpu.scores - gpu.scores).max() < 1e-3
