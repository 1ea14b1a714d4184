"""Dense similarity functions reproduce the upstream golden outputs and never yield NaN."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cdissect_labeler import similarity as sim
from tests.conftest import SHARED

GOLDEN = SHARED / "data" / "golden" / "clip_dissect_similarity"
TOLERANCE = {"soft_wpmi": 2e-4, "wpmi": 5e-5, "cos_similarity": 2e-6, "cos_similarity_cubed": 2e-6}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden files absent: {GOLDEN} (shared/ must lie beside the repository)")
    out = {name: np.load(GOLDEN / f"{name}.npy") for name in (*sim.FUNCTIONS, "clip_feats_P", "target_feats")}
    out["summary"] = json.loads((GOLDEN / "summary.json").read_text())
    return out


@pytest.mark.parametrize("function", sorted(TOLERANCE))
def test_matches_golden_values_and_labels(golden: dict, function: str) -> None:
    out = getattr(sim, function)(golden["clip_feats_P"], golden["target_feats"])
    ref = golden[function]
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOLERANCE[function]
    assert np.array_equal(out.argmax(axis=1), ref.argmax(axis=1))
    assert list(out.argmax(axis=1)) == golden["summary"][function]["argmax_per_neuron"]


def test_rank_reorder_matches_golden_ratios_and_labels(golden: dict) -> None:
    out = sim.rank_reorder(golden["clip_feats_P"], golden["target_feats"])
    ref = golden["rank_reorder"]
    assert np.abs(out / out[:, :1] - ref / ref[:, :1]).max() <= 1e-5
    assert np.array_equal(out.argmax(axis=1), ref.argmax(axis=1))


def test_rank_reorder_is_seeded(golden: dict) -> None:
    P, A = golden["clip_feats_P"], golden["target_feats"]
    a, b = sim.rank_reorder(P, A, seed=3), sim.rank_reorder(P, A, seed=3)
    c = sim.rank_reorder(P, A, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and np.array_equal(a.argmax(1), c.argmax(1))


def test_torch_in_torch_out(golden: dict) -> None:
    P, A = torch.from_numpy(golden["clip_feats_P"]), torch.from_numpy(golden["target_feats"])
    out = sim.soft_wpmi(P, A)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device == P.device
    assert np.abs(out.numpy() - golden["soft_wpmi"]).max() <= TOLERANCE["soft_wpmi"]


def _dead_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    P = (0.2 + 0.03 * rng.standard_normal((200, 30))).astype(np.float32)
    A = np.maximum(rng.standard_normal((200, 6)), 0).astype(np.float32)
    A[:, 1] = 0.0                      # dead ReLU channel
    A[:, 4] = 0.7                      # constant unit
    return P, A


@pytest.mark.parametrize("function", sim.FUNCTIONS)
def test_dead_neurons_never_nan(function: str) -> None:
    P, A = _dead_inputs()
    out = sim.compute(function, P, A)
    assert np.isfinite(out).all()
    if function in ("cos_similarity", "cos_similarity_cubed", "rank_reorder"):
        assert (out[[1, 4]] == 0).all()
    assert list(np.flatnonzero(sim.dead_neurons(A))) == [1, 4]


def test_ties_rank_lower_image_first() -> None:
    values = torch.tensor([[1.0], [3.0], [3.0], [0.0], [3.0]])
    top, idx = sim.stable_topk(values, 3)
    assert idx.flatten().tolist() == [1, 2, 4] and top.flatten().tolist() == [3.0, 3.0, 3.0]


def test_dead_neuron_top_images_are_the_first_images() -> None:
    _, idx = sim.stable_topk(torch.zeros(10, 2), 4)
    assert idx[:, 0].tolist() == [0, 1, 2, 3]


def test_bad_inputs_explain_the_problem() -> None:
    P, A = _dead_inputs()
    with pytest.raises(ValueError, match="200 images but target_feats has 199"):
        sim.soft_wpmi(P, A[:199])
    bad = P.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sim.wpmi(bad, A)
    with pytest.raises(ValueError, match="top_k=500 exceeds"):
        sim.soft_wpmi(P, A, top_k=500)
    with pytest.raises(ValueError, match="choose one of"):
        sim.compute("cosine", P, A)
    with pytest.raises(ValueError, match="parameters are: top_k, a, lam, min_prob"):
        sim.resolve_params("soft_wpmi", {"alpha": 3})
    with pytest.raises(ValueError, match="must be 2-D"):
        sim.cos_similarity(P[0], A)


def test_device_selection() -> None:
    P, A = _dead_inputs()
    if torch.cuda.is_available():
        gpu = sim.soft_wpmi(P, A, device="cuda")
        assert np.abs(gpu - sim.soft_wpmi(P, A)).max() < 1e-3
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            sim.soft_wpmi(P, A, device="cuda")
    assert sim.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
