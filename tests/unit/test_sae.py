"""Sparse-autoencoder latents: file formats, activations, chunked encode-and-pool, and the hook path."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cdissect_activations.hooks import LayerRecorder
from cdissect_activations.pooling import TokenLayout
from cdissect_activations.sae import SaeError, encode, encode_pooled, load_sae


def _saelens(path: Path, d_in: int = 6, d_sae: int = 10, seed: int = 0, metadata: dict | None = None,
             threshold: bool = False) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {"W_enc": torch.randn(d_in, d_sae, generator=g), "b_enc": torch.randn(d_sae, generator=g),
               "b_dec": torch.randn(d_in, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g)}
    if threshold:
        tensors["threshold"] = torch.rand(d_sae, generator=g)
    save_file(tensors, str(path), metadata)
    return path


def _dense(tensors: dict, x: torch.Tensor, activation: str, k: int = 0) -> torch.Tensor:
    pre = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    if activation == "relu":
        return pre.clamp_min(0)
    if activation == "jumprelu":
        return torch.where(pre > tensors["threshold"], pre, torch.zeros_like(pre)).clamp_min(0)
    keep = pre >= pre.topk(k, dim=-1).values[..., -1:]
    return torch.where(keep, pre, torch.zeros_like(pre)).clamp_min(0)


def test_saelens_relu_encodes_as_the_formula(tmp_path: Path) -> None:
    path = _saelens(tmp_path / "sae.safetensors")
    sae = load_sae(path)
    assert (sae.activation, sae.d_in, sae.d_sae) == ("relu", 6, 10)
    from safetensors.torch import load_file

    x = torch.randn(5, 6)
    assert torch.allclose(encode(sae, x), _dense(load_file(str(path)), x, "relu"), atol=1e-6)


def test_activation_from_metadata_threshold_or_caller(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    jump = _saelens(tmp_path / "jump.safetensors", threshold=True)
    sae = load_sae(jump)
    x = torch.randn(7, 6)
    assert sae.activation == "jumprelu"
    assert torch.allclose(encode(sae, x), _dense(load_file(str(jump)), x, "jumprelu"), atol=1e-6)
    topk = _saelens(tmp_path / "topk.safetensors", metadata={"activation_fn_str": "topk", "k": "3"})
    sae = load_sae(topk)
    assert (sae.activation, sae.k) == ("topk", 3)
    codes = encode(sae, x)
    assert torch.allclose(codes, _dense(load_file(str(topk)), x, "topk", 3), atol=1e-6)
    assert int((codes > 0).sum(1).max()) <= 3
    assert load_sae(topk, activation="topk", k=5).k == 5
    assert load_sae(jump, activation="relu").threshold is None


def test_openai_layout_reads_like_saelens(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    w, b, pre = torch.randn(10, 6, generator=g), torch.randn(10, generator=g), torch.randn(6, generator=g)
    save_file({"encoder.weight": w, "latent_bias": b, "pre_bias": pre, "decoder.weight": torch.randn(6, 10)},
              str(tmp_path / "oai.safetensors"), {"activation": "topk", "k": "4"})
    sae = load_sae(tmp_path / "oai.safetensors")
    x = torch.randn(3, 6)
    assert torch.allclose(encode(sae, x), _dense({"W_enc": w.T, "b_enc": b, "b_dec": pre}, x, "topk", 4), atol=1e-6)


def test_files_that_do_not_fit_say_what_is_expected(tmp_path: Path) -> None:
    save_file({"weight": torch.zeros(3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SaeError, match=r"W_enc \[d_in, d_sae\].*encoder.weight"):
        load_sae(tmp_path / "other.safetensors")
    save_file({"W_enc": torch.zeros(4, 8), "b_enc": torch.zeros(7), "b_dec": torch.zeros(4)},
              str(tmp_path / "shapes.safetensors"))
    with pytest.raises(SaeError, match=r"b_enc has shape \[7\].*needs \[8\]"):
        load_sae(tmp_path / "shapes.safetensors")
    path = _saelens(tmp_path / "sae.safetensors")
    with pytest.raises(SaeError, match="TopK SAE needs k"):
        load_sae(path, activation="topk")
    with pytest.raises(SaeError, match="unknown SAE activation"):
        load_sae(path, activation="gelu")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SaeError, match="not a readable safetensors"):
        load_sae(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_chunked_encode_pool_equals_dense(tmp_path: Path, reduce: str) -> None:
    sae = load_sae(_saelens(tmp_path / "sae.safetensors", d_sae=16))
    rows = torch.randn(5, 7, 6)
    dense = encode(sae, rows.reshape(-1, 6)).reshape(5, 7, 16)
    want = dense.mean(1) if reduce == "mean" else dense.amax(1)
    for max_elements in (16, 16 * 3, 16 * 35, 10 ** 6):  # one row at a time, chunks across images, all at once
        got = encode_pooled(sae, rows, reduce, max_elements=max_elements)
        assert torch.allclose(got, want, atol=1e-5), max_elements
    with pytest.raises(SaeError, match="reads 6-wide activations but the layer gives 5"):
        encode_pooled(sae, torch.randn(2, 3, 5))


def test_recorder_turns_a_conv_layer_into_pooled_latents(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3)).eval()
    sae = load_sae(_saelens(tmp_path / "sae.safetensors", d_in=6, d_sae=12))
    x = torch.randn(3, 3, 9, 9)
    for pooling, reduce in (("avg", "mean"), ("max", "max")):
        out = LayerRecorder(model, ["1", "2"], pooling, features={"1": sae}).record(x)
        maps = model[1](model[0](x))  # [3, 6, 7, 7]
        codes = encode(sae, maps.flatten(2).transpose(1, 2).reshape(-1, 6)).reshape(3, 49, 12)
        assert out["1"].shape == (3, 12) and out["2"].shape == (3, 4)
        assert torch.allclose(out["1"], codes.mean(1) if reduce == "mean" else codes.amax(1), atol=1e-5)


def test_recorder_encodes_the_tokens_a_token_pooling_uses(tmp_path: Path) -> None:
    class Tokens(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model = nn.Sequential(Tokens()).eval()
    sae = load_sae(_saelens(tmp_path / "sae.safetensors", d_in=6, d_sae=9))
    x = torch.randn(2, 1 + 2 + 4, 6)  # CLS, 2 registers, 4 patches
    layout = TokenLayout(cls=True, registers=2, tokens=7)
    codes = encode(sae, x.reshape(-1, 6)).reshape(2, 7, 9)
    for token_pooling, want in (("cls", codes[:, 0]), ("patch_mean", codes[:, 3:].mean(1)),
                                ("mean", torch.cat([codes[:, :1], codes[:, 3:]], 1).mean(1))):
        rec = LayerRecorder(model, ["0"], "avg", token_pooling, layout=layout, features={"0": sae})
        assert torch.allclose(_record(rec, x), want, atol=1e-5), token_pooling


def _record(rec: LayerRecorder, x: torch.Tensor) -> torch.Tensor:
    """LayerRecorder.record takes image batches; drive the hooks with a token batch directly."""
    with rec:
        rec._outputs = {}
        rec.model(x)
        return rec._outputs["0"]
